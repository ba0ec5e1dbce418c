//! One simulated ComfyUI process: its queue (a heap on `number`), history, WebSocket clients and the
//! routing of events to them (execution events only to the submitting `client_id`, `status` to all).

use std::cmp::Ordering as CmpOrdering;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::cache::OutputCache;
use super::config::ExecTime;
use super::files::Dirs;
use crate::catalogue::NodeCatalogue as Catalogue;

/// ComfyUI keeps at most this many history entries.
const MAX_HISTORY: usize = 10_000;

/// A frame queued for one WebSocket.
#[derive(Debug, Clone)]
pub(crate) enum WsOut {
    /// A JSON text message.
    Text(Arc<str>),
    /// A binary frame (`TEXT` progress, previews).
    Binary(Bytes),
}

/// One prompt in the queue (`[number, prompt_id, prompt, extra_data, outputs_to_execute]`).
#[derive(Debug, Clone)]
pub(crate) struct QueueItem {
    /// Priority; lower runs first.
    pub number: f64,
    /// `number` as the client sees it (an integer unless given as a float).
    pub number_json: Value,
    /// The prompt id.
    pub prompt_id: String,
    /// The validated prompt.
    pub prompt: Map<String, Value>,
    /// `extra_data` without the sensitive keys.
    pub extra_data: Map<String, Value>,
    /// Output nodes to run.
    pub outputs: Vec<String>,
}

impl QueueItem {
    /// The 5-tuple of `/queue` and history's `prompt`.
    pub fn tuple(&self) -> Value {
        json!([
            self.number_json,
            self.prompt_id,
            self.prompt,
            self.extra_data,
            self.outputs
        ])
    }

    /// The submitting WebSocket's id, if any.
    pub fn client_id(&self) -> Option<String> {
        self.extra_data
            .get("client_id")
            .and_then(Value::as_str)
            .map(str::to_string)
    }
}

/// Heap order: `(number, prompt_id)` ascending, like Python's `heapq` on the tuples.
#[derive(Debug)]
struct Queued(QueueItem);

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        // Reversed: BinaryHeap is a max-heap, the queue wants the smallest number first.
        other
            .0
            .number
            .total_cmp(&self.0.number)
            .then_with(|| other.0.prompt_id.cmp(&self.0.prompt_id))
    }
}

/// Queue and history of one replica.
#[derive(Debug, Default)]
pub(crate) struct QueueState {
    /// The next automatic `number`.
    pub counter: i64,
    pending: BinaryHeap<Queued>,
    /// The running prompt and the node it is at.
    pub running: Option<(QueueItem, Option<String>)>,
    /// Finished prompts in completion order.
    pub history: Map<String, Value>,
}

impl QueueState {
    /// Pending + running, as `queue_remaining`.
    pub fn remaining(&self) -> usize {
        self.pending.len() + usize::from(self.running.is_some())
    }

    /// The pending items in heap-array order (not sorted), as `/queue` shows them.
    pub fn pending(&self) -> impl Iterator<Item = &QueueItem> {
        self.pending.as_slice().iter().map(|q| &q.0)
    }

    /// Stores a finished job, dropping the oldest entry beyond ComfyUI's cap.
    pub fn add_history(&mut self, prompt_id: String, entry: Value) {
        if self.history.len() >= MAX_HISTORY
            && let Some(first) = self.history.keys().next().cloned()
        {
            self.history.shift_remove(&first);
        }
        self.history.insert(prompt_id, entry);
    }
}

struct Socket {
    conn: u64,
    tx: mpsc::UnboundedSender<WsOut>,
}

/// Counters for tests and reports, summed over replicas.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub executed: AtomicU64,
    pub failed: AtomicU64,
    pub interrupted: AtomicU64,
    /// Prompt ids in the order their execution started (all replicas).
    pub started: std::sync::Mutex<Vec<String>>,
}

/// What all replicas of one worker share.
pub(crate) struct Shared {
    pub catalogue: Arc<Catalogue>,
    pub dirs: Dirs,
    pub exec_time: ExecTime,
    pub failure_rate: f64,
    pub cache_enabled: bool,
    pub counters: Counters,
    /// Cancelled by `kill()`: everything stops at once.
    pub kill: CancellationToken,
    /// Cancelled by `shutdown()`: stop accepting, finish the running job, close sockets politely.
    pub shutdown: CancellationToken,
    /// Set on kill so background compute writes no more files.
    pub dead: AtomicBool,
    pub tracker: TaskTracker,
    /// When the cold start is over.
    pub ready_at: Instant,
    pub started: Instant,
}

/// One simulated ComfyUI process.
pub(crate) struct Replica {
    pub shared: Arc<Shared>,
    /// 0-based replica number (shown in `system_stats` argv).
    pub index: usize,
    queue: Mutex<QueueState>,
    /// Woken when something is queued.
    pub wake: Notify,
    sockets: Mutex<HashMap<String, Socket>>,
    next_conn: AtomicU64,
    /// ComfyUI's global interrupt flag, reset when a job starts.
    pub interrupt: AtomicBool,
    /// Wakes a running job's simulated work when an interrupt arrives.
    pub interrupt_notify: Notify,
    pub rng: Mutex<fastrand::Rng>,
    pub cache: Mutex<OutputCache>,
    /// PreviewImage's name prefix, fixed per process like ComfyUI's node instance.
    pub preview_prefix: String,
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Milliseconds since the Unix epoch (ComfyUI's `timestamp` and `create_time`).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Replica {
    pub fn new(shared: Arc<Shared>, index: usize, seed: u64) -> Replica {
        let mut rng = fastrand::Rng::with_seed(seed);
        let letters: String = (0..5).map(|_| rng.lowercase()).collect();
        Replica {
            shared,
            index,
            queue: Mutex::new(QueueState::default()),
            wake: Notify::new(),
            sockets: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            interrupt: AtomicBool::new(false),
            interrupt_notify: Notify::new(),
            rng: Mutex::new(rng),
            cache: Mutex::new(OutputCache::default()),
            preview_prefix: format!("ComfyUI_temp_{letters}"),
        }
    }

    /// The queue, locked. Lock order: queue, then sockets.
    pub fn queue(&self) -> MutexGuard<'_, QueueState> {
        lock(&self.queue)
    }

    fn encode(event: &str, data: Value) -> WsOut {
        WsOut::Text(json!({"type": event, "data": data}).to_string().into())
    }

    fn deliver(&self, msg: WsOut, to: Option<&str>) {
        let sockets = lock(&self.sockets);
        match to {
            Some(sid) => {
                if let Some(s) = sockets.get(sid) {
                    let _ = s.tx.send(msg);
                }
            }
            None => sockets.values().for_each(|s| {
                let _ = s.tx.send(msg.clone());
            }),
        }
    }

    /// ComfyUI's `send_sync`: to the socket `to`, or to every socket when `to` is `None`.
    pub fn send(&self, event: &str, data: Value, to: Option<&str>) {
        self.deliver(Self::encode(event, data), to);
    }

    /// A binary frame, routed like [`Replica::send`].
    pub fn send_binary(&self, frame: Bytes, to: Option<&str>) {
        self.deliver(WsOut::Binary(frame), to);
    }

    fn status(remaining: usize) -> Value {
        json!({"status": {"exec_info": {"queue_remaining": remaining}}})
    }

    /// Broadcasts `status` (ComfyUI's `queue_updated`); call with the queue locked so the order of
    /// status messages follows the order of queue changes.
    pub fn queue_updated(&self, q: &QueueState) {
        self.send("status", Self::status(q.remaining()), None);
    }

    /// Queues a validated prompt and wakes the worker.
    pub fn put(&self, item: QueueItem) {
        let mut q = self.queue();
        q.pending.push(Queued(item));
        self.queue_updated(&q);
        drop(q);
        self.wake.notify_one();
    }

    /// Takes the next prompt to run (marking it running), or `None` if the queue is empty.
    pub fn take_next(&self) -> Option<QueueItem> {
        let mut q = self.queue();
        let item = q.pending.pop()?.0;
        q.running = Some((item.clone(), None));
        self.queue_updated(&q);
        Some(item)
    }

    /// Removes the pending prompts with these ids (running ones are not touched).
    pub fn delete_pending(&self, ids: &[String]) {
        let mut q = self.queue();
        for id in ids {
            let before = q.pending.len();
            if !q.pending.iter().any(|p| &p.0.prompt_id == id) {
                continue;
            }
            q.pending.retain(|p| &p.0.prompt_id != id);
            if before == 1 {
                // ComfyUI wipes the queue (one status) and then reports the deletion (another).
                self.queue_updated(&q);
            }
            self.queue_updated(&q);
        }
    }

    /// Empties the pending queue.
    pub fn clear_pending(&self) {
        let mut q = self.queue();
        q.pending.clear();
        self.queue_updated(&q);
    }

    /// Registers a WebSocket: queues its first `status` (with `sid`) and, if its client is running a job,
    /// the current `executing` node, before any broadcast can reach it. Returns the connection number.
    pub fn register(&self, sid: &str, tx: mpsc::UnboundedSender<WsOut>) -> u64 {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let q = self.queue();
        let mut first = Self::status(q.remaining());
        first["sid"] = Value::from(sid);
        let _ = tx.send(Self::encode("status", first));
        if let Some((item, node)) = &q.running
            && item.client_id().as_deref() == Some(sid)
        {
            let _ = tx.send(Self::encode("executing", json!({"node": node})));
        }
        lock(&self.sockets).insert(sid.to_string(), Socket { conn, tx });
        conn
    }

    /// Forgets the WebSocket of `sid` when connection `conn` ends. Like ComfyUI (`finally:
    /// self.sockets.pop(sid)` in its handler), this removes whatever socket holds `sid` now, even a newer
    /// connection that took it over: a client reconnecting under the same id before its old connection
    /// is seen closing gets no events until it connects again. `conn` is only logged.
    pub fn unregister(&self, sid: &str, conn: u64) {
        let mut sockets = lock(&self.sockets);
        if let Some(current) = sockets.remove(sid)
            && current.conn != conn
        {
            tracing::debug!(
                sid,
                conn,
                newer = current.conn,
                "an old connection's end dropped a newer socket of the same client id, as ComfyUI does"
            );
        }
    }

    /// Sets the interrupt flag if `prompt_id` (or, without one, any prompt) is running.
    pub fn request_interrupt(&self, prompt_id: Option<&str>) {
        let q = self.queue();
        let matches = match (&q.running, prompt_id) {
            (Some((item, _)), Some(id)) => item.prompt_id == id,
            (_, None) => true,
            (None, Some(_)) => false,
        };
        if matches {
            self.interrupt.store(true, Ordering::SeqCst);
            self.interrupt_notify.notify_waiters();
        }
    }

    /// Seconds since start, for `system_stats`.
    pub fn uptime(&self) -> Duration {
        self.shared.started.elapsed()
    }
}
