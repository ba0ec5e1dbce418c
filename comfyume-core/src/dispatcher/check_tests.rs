//! How [`Dispatcher::check_workflow`] combines what each provider says about a workflow.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::json;

use super::*;
use crate::job::Job;
use crate::provider::{Capacity, ProviderError, ProviderEventStream};
use crate::sink::LocalDirSink;
use crate::store::MemoryStore;

/// A provider that answers every check the same way. Test helper only.
struct Judge {
    name: &'static str,
    answer: WorkflowCheck,
}

#[async_trait]
impl InferenceProvider for Judge {
    fn name(&self) -> &str {
        self.name
    }
    fn capacity(&self) -> Capacity {
        Capacity { slots: 0 }
    }
    async fn submit(&self, _job: &Job) -> Result<ProviderEventStream, ProviderError> {
        Err(ProviderError::Unavailable("never runs jobs".into()))
    }
    async fn check_workflow(&self, _workflow: &serde_json::Value, _inputs: &[String]) -> WorkflowCheck {
        self.answer.clone()
    }
}

fn invalid(why: &str) -> WorkflowCheck {
    WorkflowCheck::Invalid {
        message: why.into(),
        body: json!({"error": {"type": why}, "node_errors": {}}),
    }
}

fn engine(answers: Vec<(&'static str, WorkflowCheck)>) -> (Dispatcher, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let providers: Vec<Arc<dyn InferenceProvider>> = answers
        .into_iter()
        .map(|(name, answer)| Arc::new(Judge { name, answer }) as Arc<dyn InferenceProvider>)
        .collect();
    let engine = Dispatcher::new(
        Arc::new(MemoryStore::new()),
        Arc::new(LocalDirSink::new(dir.path())),
        providers,
        SchedulerConfig::default(),
        DispatcherConfig::default(),
    );
    (engine, dir)
}

#[tokio::test]
async fn any_provider_that_can_run_it_makes_it_valid() {
    let (e, _d) = engine(vec![("a", invalid("a")), ("b", WorkflowCheck::Valid)]);
    assert_eq!(e.check_workflow(&json!({}), &[]).await, WorkflowCheck::Valid);
}

#[tokio::test]
async fn the_first_refusal_is_the_answer_when_none_can_run_it() {
    let (e, _d) = engine(vec![
        ("a", WorkflowCheck::Unknown),
        ("b", invalid("b")),
        ("c", invalid("c")),
    ]);
    assert_eq!(e.check_workflow(&json!({}), &[]).await, invalid("b"));
}

#[tokio::test]
async fn unknown_when_nobody_can_tell_and_drained_providers_are_not_asked() {
    let (e, _d) = engine(vec![("a", WorkflowCheck::Unknown)]);
    assert_eq!(e.check_workflow(&json!({}), &[]).await, WorkflowCheck::Unknown);
    let (e, _d) = engine(vec![("a", invalid("a")), ("b", WorkflowCheck::Unknown)]);
    assert!(e.set_draining("a", true));
    assert_eq!(e.check_workflow(&json!({}), &[]).await, WorkflowCheck::Unknown);
}
