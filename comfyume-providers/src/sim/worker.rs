//! The prompt worker of one replica: takes prompts off the queue one at a time and executes them with
//! ComfyUI's message sequence (`execution_start`, `execution_cached`, per node `progress_state` +
//! `executing` [+ `progress`] [+ `executed`], then `execution_success` / `execution_error` /
//! `execution_interrupted`, the `status` broadcast, and `executing` with `node: null` last).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Map, Value, json};

use super::cache::{self, CachedNode};
use super::nodes::{self, Data, Inputs, NodeCtx, NodeError};
use super::order::ExecutionList;
use super::replica::{QueueItem, Replica, lock, now_ms};

/// ComfyUI's ProgressBar throttle: at least this long between updates…
const PROGRESS_MIN_INTERVAL: Duration = Duration::from_millis(100);
/// …and at least this many percent of progress.
const PROGRESS_MIN_PERCENT: f64 = 0.5;

/// Runs prompts until the worker is killed or shut down.
pub(crate) async fn run(replica: Arc<Replica>) {
    let shared = replica.shared.clone();
    loop {
        let item = loop {
            if shared.shutdown.is_cancelled() || shared.kill.is_cancelled() {
                return;
            }
            if let Some(item) = replica.take_next() {
                break item;
            }
            tokio::select! {
                _ = shared.kill.cancelled() => return,
                _ = shared.shutdown.cancelled() => return,
                _ = replica.wake.notified() => {}
            }
        };
        let client = item.client_id();
        let entry = tokio::select! {
            _ = shared.kill.cancelled() => return,
            entry = execute(&replica, &item) => entry,
        };
        {
            let mut q = replica.queue();
            q.running = None;
            q.add_history(item.prompt_id.clone(), entry);
            replica.queue_updated(&q);
        }
        if let Some(cid) = client.as_deref() {
            replica.send(
                "executing",
                json!({"node": null, "prompt_id": item.prompt_id}),
                Some(cid),
            );
        }
    }
}

/// How a job ended.
enum Outcome {
    Success,
    Error(Value),
    Interrupted(String),
}

/// The state of one running prompt.
struct Run<'a> {
    replica: &'a Replica,
    item: &'a QueueItem,
    client: Option<String>,
    messages: Vec<Value>,
    progress: Map<String, Value>,
    ui_outputs: Map<String, Value>,
    meta: Map<String, Value>,
    executed: Vec<String>,
}

impl Run<'_> {
    fn to(&self) -> Option<&str> {
        self.client.as_deref()
    }

    /// ComfyUI's `add_message`: recorded in the history status; sent to the client, or broadcast when
    /// `broadcast` and there is no client.
    fn add_message(&mut self, event: &str, mut data: Value, broadcast: bool) {
        data["timestamp"] = Value::from(now_ms());
        if self.client.is_some() || broadcast {
            self.replica.send(event, data.clone(), self.to());
        }
        self.messages.push(json!([event, data]));
    }

    fn progress_entry(&self, node: &str, value: Value, max: Value, state: &str) -> Value {
        json!({"value": value, "max": max, "state": state, "node_id": node, "prompt_id": self.item.prompt_id,
               "display_node_id": node, "parent_node_id": null, "real_node_id": node})
    }

    fn send_progress_state(&self) {
        let data = json!({"prompt_id": self.item.prompt_id, "nodes": self.progress});
        self.replica.send("progress_state", data, self.to());
    }

    fn set_progress(&mut self, node: &str, value: Value, max: Value, state: &str) {
        let entry = self.progress_entry(node, value, max, state);
        self.progress.insert(node.to_string(), entry);
        self.send_progress_state();
    }

    fn finish_progress(&mut self, node: &str) {
        let max = self
            .progress
            .get(node)
            .map(|e| e["max"].clone())
            .unwrap_or(json!(1.0));
        self.set_progress(node, max.clone(), max, "finished");
    }

    fn record_ui(&mut self, node: &str, ui: &Value) {
        if self.client.is_some() {
            let data =
                json!({"node": node, "display_node": node, "output": ui, "prompt_id": self.item.prompt_id});
            self.replica.send("executed", data, self.to());
        }
        self.ui_outputs.insert(node.to_string(), ui.clone());
        self.meta.insert(
            node.to_string(),
            json!({"node_id": node, "display_node": node, "parent_node": null, "real_node_id": node}),
        );
    }

    fn class_of(&self, node: &str) -> String {
        self.item
            .prompt
            .get(node)
            .and_then(|n| n.get("class_type"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    }

    fn error_payload(&self, node: &str, err: &NodeError, inputs: &Inputs) -> Value {
        let current_inputs: Map<String, Value> = inputs
            .0
            .iter()
            .map(|(name, d)| (name.clone(), json!([d.describe()])))
            .collect();
        json!({
            "prompt_id": self.item.prompt_id,
            "node_id": node,
            "node_type": self.class_of(node),
            "executed": self.executed,
            "exception_message": format!("{}\n", err.message),
            "exception_type": err.exception_type,
            "traceback": [format!(
                "  File \"comfyume-providers/src/sim/nodes/mod.rs\", in {}\n    (simulated by the comfyume sim-worker, not ComfyUI)\n",
                err.function
            )],
            "current_inputs": current_inputs,
            "current_outputs": self.item.prompt.keys().collect::<Vec<_>>(),
        })
    }

    /// Waits `d` of simulated work; `Err` as soon as an interrupt is requested.
    async fn work(&self, d: Duration) -> Result<(), ()> {
        let interrupt = self.replica.interrupt_notify.notified();
        tokio::pin!(interrupt);
        interrupt.as_mut().enable();
        if self.replica.interrupt.load(Ordering::SeqCst) {
            return Err(());
        }
        if d.is_zero() {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(()),
            _ = interrupt => Err(()),
        }
    }

    /// Replays a node's ProgressBar steps over its share of simulated time, throttled like ComfyUI.
    async fn progress(&mut self, node: &str, steps: u64, share: Duration) -> Result<(), ()> {
        let tick = share / steps.max(1) as u32;
        let mut last_sent: Option<(u64, Instant)> = None;
        for i in 1..=steps {
            self.work(tick).await?;
            let now = Instant::now();
            let send = match last_sent {
                None => true,
                Some(_) if i >= steps => true,
                Some((v, t)) => {
                    now - t >= PROGRESS_MIN_INTERVAL
                        && (i - v) as f64 / steps as f64 * 100.0 >= PROGRESS_MIN_PERCENT
                }
            };
            if send {
                last_sent = Some((i, now));
                self.set_progress(node, json!(i), json!(steps), "running");
                let data = json!({"value": i, "max": steps, "prompt_id": self.item.prompt_id, "node": node});
                self.replica.send("progress", data, self.to());
            }
        }
        Ok(())
    }
}

/// A binary `TEXT` frame: `u32 3`, `u32 len(node_id)`, node id, text.
fn text_frame(node: &str, text: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(8 + node.len() + text.len());
    b.put_u32(3);
    b.put_u32(node.len() as u32);
    b.put_slice(node.as_bytes());
    b.put_slice(text.as_bytes());
    b.freeze()
}

/// Executes one prompt and returns its history entry.
async fn execute(replica: &Arc<Replica>, item: &QueueItem) -> Value {
    let shared = &replica.shared;
    replica.interrupt.store(false, Ordering::SeqCst);
    let mut run = Run {
        replica,
        item,
        client: item.client_id(),
        messages: Vec::new(),
        progress: Map::new(),
        ui_outputs: Map::new(),
        meta: Map::new(),
        executed: Vec::new(),
    };
    run.add_message("execution_start", json!({"prompt_id": item.prompt_id}), false);
    lock(&shared.counters.started).push(item.prompt_id.clone());

    let sigs = cache::signatures(&item.prompt, &shared.catalogue, &shared.dirs);
    let cached: HashSet<String> = if shared.cache_enabled {
        let c = lock(&replica.cache);
        item.prompt
            .keys()
            .filter(|id| sigs.get(*id).is_some_and(|s| c.contains(*s)))
            .cloned()
            .collect()
    } else {
        HashSet::new()
    };
    let cached_list: Vec<&String> = item.prompt.keys().filter(|id| cached.contains(*id)).collect();
    run.add_message(
        "execution_cached",
        json!({"nodes": cached_list, "prompt_id": item.prompt_id}),
        false,
    );

    let outputs: HashSet<String> = item
        .prompt
        .iter()
        .filter(|(_, n)| {
            n.get("class_type")
                .and_then(Value::as_str)
                .and_then(|c| shared.catalogue.get(c))
                .is_some_and(|d| d.output_node)
        })
        .map(|(id, _)| id.clone())
        .collect();
    let mut list = ExecutionList::new(&item.prompt, &item.outputs, &outputs, &cached);

    // Simulated time: progress-reporting nodes get it all, otherwise it is spread over the nodes that run.
    let to_run: Vec<String> = list
        .pending()
        .iter()
        .filter(|n| !cached.contains(*n))
        .cloned()
        .collect();
    let (total, fail_at) = {
        let mut rng = lock(&replica.rng);
        let total = shared.exec_time.draw(&mut rng);
        let fail = !to_run.is_empty() && rng.f64() < shared.failure_rate;
        (total, fail.then(|| to_run[rng.usize(0..to_run.len())].clone()))
    };
    let progress_nodes = to_run
        .iter()
        .filter(|n| nodes::reports_progress(&run.class_of(n)))
        .count();
    let share = |class: &str| -> Duration {
        match (progress_nodes, nodes::reports_progress(class)) {
            (0, _) if !to_run.is_empty() => total / to_run.len() as u32,
            (n, true) if n > 0 => total / n as u32,
            _ => Duration::ZERO,
        }
    };

    // Cached nodes are not run again; their outputs feed the nodes that do run.
    let mut results: HashMap<String, Arc<Vec<Data>>> = {
        let mut c = lock(&replica.cache);
        cached
            .iter()
            .filter_map(|id| Some((id.clone(), c.get(*sigs.get(id)?)?.outputs)))
            .collect()
    };
    let outcome = loop {
        if list.is_empty() {
            break Outcome::Success;
        }
        let node = match list.stage() {
            Ok(n) => n,
            Err(cycle) => {
                let blamed = cycle.first().cloned().unwrap_or_default();
                let err = NodeError::new(
                    "graph.DependencyCycleError",
                    "Dependency cycle detected",
                    "stage_node_execution",
                );
                break Outcome::Error(run.error_payload(&blamed, &err, &Inputs(Vec::new())));
            }
        };
        let class = run.class_of(&node);
        let sig = sigs.get(&node).copied().unwrap_or_default();
        let hit = if cached.contains(&node) {
            lock(&replica.cache).get(sig)
        } else {
            None
        };
        if let Some(hit) = hit {
            if let Some(ui) = &hit.ui {
                run.record_ui(&node, ui);
            }
            run.finish_progress(&node);
            results.insert(node.clone(), hit.outputs);
            list.complete(&node);
            continue;
        }

        run.set_progress(&node, json!(0.0), json!(1.0), "running");
        if let Some(cid) = run.to() {
            replica.send(
                "executing",
                json!({"node": node, "display_node": node, "prompt_id": item.prompt_id}),
                Some(cid),
            );
        }
        if let Some((_, at)) = replica.queue().running.as_mut() {
            *at = Some(node.clone());
        }
        if replica.interrupt.load(Ordering::SeqCst) {
            break Outcome::Interrupted(node);
        }

        let inputs = resolve_inputs(&item.prompt, &node, &results);
        let computed = compute(replica, item, &class, &inputs).await;
        let out = match computed {
            Ok(out) => out,
            Err(err) if err.is_interrupt() => break Outcome::Interrupted(node),
            Err(err) => break Outcome::Error(run.error_payload(&node, &err, &inputs)),
        };
        for text in &out.texts {
            replica.send_binary(text_frame(&node, text), run.to());
        }
        let simulated = if out.progress_steps > 0 {
            run.progress(&node, out.progress_steps, share(&class)).await
        } else {
            run.work(share(&class)).await
        };
        if simulated.is_err() {
            break Outcome::Interrupted(node);
        }
        if fail_at.as_deref() == Some(node.as_str()) {
            let err = NodeError::new(
                "RuntimeError",
                format!(
                    "Simulated failure (comfyume sim-worker, failure_rate {})",
                    shared.failure_rate
                ),
                "execute",
            );
            break Outcome::Error(run.error_payload(&node, &err, &inputs));
        }
        if let Some(ui) = &out.ui {
            run.record_ui(&node, ui);
        }
        run.finish_progress(&node);
        run.executed.push(node.clone());
        let outputs = Arc::new(out.outputs);
        if shared.cache_enabled {
            lock(&replica.cache).put(
                sig,
                CachedNode {
                    outputs: outputs.clone(),
                    ui: out.ui.clone(),
                },
            );
        }
        results.insert(node.clone(), outputs);
        list.complete(&node);
    };

    let counters = &shared.counters;
    let status_str = match &outcome {
        Outcome::Success => {
            run.add_message("execution_success", json!({"prompt_id": item.prompt_id}), false);
            counters.executed.fetch_add(1, Ordering::Relaxed);
            "success"
        }
        Outcome::Error(payload) => {
            run.add_message("execution_error", payload.clone(), false);
            counters.failed.fetch_add(1, Ordering::Relaxed);
            "error"
        }
        Outcome::Interrupted(node) => {
            let data = json!({"prompt_id": item.prompt_id, "node_id": node, "node_type": run.class_of(node),
                              "executed": run.executed});
            run.add_message("execution_interrupted", data, true);
            counters.interrupted.fetch_add(1, Ordering::Relaxed);
            "error"
        }
    };
    json!({
        "prompt": item.tuple(),
        "outputs": run.ui_outputs,
        "status": {"status_str": status_str, "completed": status_str == "success", "messages": run.messages},
        "meta": run.meta,
    })
}

/// A node's inputs: links resolved to upstream outputs, everything else as the prompt's widget value.
fn resolve_inputs(
    prompt: &Map<String, Value>,
    node: &str,
    results: &HashMap<String, Arc<Vec<Data>>>,
) -> Inputs {
    let inputs = prompt
        .get(node)
        .and_then(|n| n.get("inputs"))
        .and_then(Value::as_object);
    Inputs(
        inputs
            .into_iter()
            .flatten()
            .map(|(name, v)| {
                let data = match v.as_array().map(Vec::as_slice) {
                    Some([Value::String(from), Value::Number(slot)]) => results
                        .get(from)
                        .and_then(|o| o.get(slot.as_u64().unwrap_or(u64::MAX) as usize))
                        .cloned()
                        .unwrap_or(Data::Json(Value::Null)),
                    _ => Data::Json(v.clone()),
                };
                (name.clone(), data)
            })
            .collect(),
    )
}

/// Runs the node's real work on a blocking thread (image processing, encoding, file writes).
async fn compute(
    replica: &Arc<Replica>,
    item: &QueueItem,
    class: &str,
    inputs: &Inputs,
) -> Result<nodes::NodeOutput, NodeError> {
    let replica = replica.clone();
    let prompt = item.prompt.clone();
    let extra = item
        .extra_data
        .get("extra_pnginfo")
        .and_then(Value::as_object)
        .cloned();
    let class = class.to_string();
    let inputs = Inputs(inputs.0.clone());
    let job = tokio::task::spawn_blocking(move || {
        let ctx = NodeCtx {
            prompt: &prompt,
            extra_pnginfo: extra.as_ref(),
            dirs: &replica.shared.dirs,
            preview_prefix: &replica.preview_prefix,
            dead: &replica.shared.dead,
            interrupt: &replica.interrupt,
        };
        nodes::run(&class, &inputs, &ctx)
    });
    job.await.unwrap_or_else(|e| {
        Err(NodeError::new(
            "RuntimeError",
            format!("node panicked: {e}"),
            "execute",
        ))
    })
}
