//! Embeds comfyume's engine: an in-memory job store, the fair scheduler and a trivial provider.
//! Run it with `cargo run --example embed`.
use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use comfyume_core::provider::{Capacity, ProviderError, ProviderEventStream};
use comfyume_core::{Artifact, ProviderEvent, SchedulerConfig, *};

/// Answers every job at once with a text file: stands in for a GPU box.
struct Echo;

#[async_trait]
impl InferenceProvider for Echo {
    fn name(&self) -> &str {
        "echo"
    }
    fn capacity(&self) -> Capacity {
        Capacity { slots: 2 }
    }
    async fn submit(&self, job: &Job) -> Result<ProviderEventStream, ProviderError> {
        let nodes = job.spec.workflow.as_object().map_or(0, |w| w.len());
        let file = Artifact::output("text", "echo.txt", format!("{nodes} nodes"));
        let events = [
            ProviderEvent::Started,
            ProviderEvent::Artifact(file),
            ProviderEvent::Completed,
        ];
        Ok(Box::pin(futures::stream::iter(events)))
    }
}

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let out = std::env::temp_dir().join("comfyume-embed-example");
    let (store, sink) = (Arc::new(MemoryStore::new()), Arc::new(LocalDirSink::new(&out)));
    let engine = Dispatcher::new(
        store,
        sink,
        vec![Arc::new(Echo)],
        SchedulerConfig::default(),
        DispatcherConfig::default(),
    );
    let mut events = engine.subscribe();
    engine.start().await?;
    let workflow = serde_json::json!({"1": {"class_type": "EmptyImage", "inputs": {}}});
    let job = engine
        .submit(JobSpec::new(UserId::new("alice")?, workflow))
        .await?;
    while let Ok(event) = events.recv().await {
        println!("{} {}", event.job_id, serde_json::to_string(&event.kind)?);
        if event.job_id == job.id && event.kind.is_terminal() {
            break;
        }
    }
    let path = out.join(format!("users/alice/output/{}/echo.txt", job.id));
    println!(
        "output: {} = {:?}",
        path.display(),
        std::fs::read_to_string(&path)?
    );
    engine.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
