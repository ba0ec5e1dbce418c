//! Embeds comfyume's engine: an in-memory job store, the fair scheduler and a trivial provider.
//! Run it with `cargo run --example embed`.
use std::sync::Arc;

use async_trait::async_trait;
use comfyume_core::provider::{Capacity, Health, ProviderError, ProviderEventStream};
use comfyume_core::{Artifact, OutputKind, ProviderEvent, SchedulerConfig, *};

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
        let text = format!("{} nodes", job.spec.workflow.as_object().map_or(0, |w| w.len()));
        let file = Artifact {
            node_id: None,
            media: "text".into(),
            filename: "echo.txt".into(),
            subfolder: String::new(),
            kind: OutputKind::Output,
            data: text.into(),
        };
        let events = [
            ProviderEvent::Started,
            ProviderEvent::Artifact(file),
            ProviderEvent::Completed,
        ];
        Ok(Box::pin(futures::stream::iter(events)))
    }
    async fn cancel(&self, _job: JobId) -> Result<(), ProviderError> {
        Ok(())
    }
    async fn health(&self) -> Health {
        Health::Healthy
    }
}

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let out = std::env::temp_dir().join("comfyume-embed-example");
    let engine = Dispatcher::new(
        Arc::new(MemoryStore::new()),
        Arc::new(LocalDirSink::new(&out)),
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
        println!(
            "{} {}",
            event.job_id,
            serde_json::to_string(&event.kind).unwrap_or_default()
        );
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
    engine.shutdown(std::time::Duration::from_secs(5)).await;
    Ok(())
}
