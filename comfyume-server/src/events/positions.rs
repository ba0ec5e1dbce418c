//! Queue positions for live event streams: one background task walks the projected order when the queue
//! changed, at most once per [`DEBOUNCE`], and shares the result with every connection.

use std::sync::Arc;
use std::time::Duration;

use comfyume_core::EventKind;
use tokio::sync::{Notify, broadcast, watch};

use crate::api::views::{POSITION_WINDOW, Positions};
use crate::state::AppState;

/// How long after a queue change the positions are walked (more changes within it share one walk).
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// The latest positions, and a way to say the queue changed.
#[derive(Debug)]
pub struct PositionBoard {
    latest: watch::Sender<Arc<Positions>>,
    changed: Notify,
}

impl Default for PositionBoard {
    fn default() -> Self {
        Self {
            latest: watch::Sender::new(Arc::new(Positions::default())),
            changed: Notify::new(),
        }
    }
}

impl PositionBoard {
    /// Follows the positions: the receiver sees a change after each walk.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Positions>> {
        self.latest.subscribe()
    }

    /// Says the queue changed in a way no event shows (an admin override).
    pub fn poke(&self) {
        self.changed.notify_one();
    }
}

/// True for events after which positions may differ.
fn moves_the_queue(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Queued { .. }
            | EventKind::Dispatched { .. }
            | EventKind::Retrying { .. }
            | EventKind::Succeeded { .. }
            | EventKind::Failed { .. }
            | EventKind::Cancelled { .. }
    )
}

/// Walks the order whenever the queue changed, until the server shuts down.
pub(crate) async fn run(state: AppState) {
    let token = state.shutdown_token().clone();
    let mut events = state.engine().subscribe();
    let board = state.positions();
    publish(&state);
    loop {
        // Wait for a change.
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = board.changed.notified() => break,
                event = events.recv() => match event {
                    Ok(e) if moves_the_queue(&e.kind) => break,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(DEBOUNCE) => {}
        }
        // Changes during the pause are covered by this walk.
        events = events.resubscribe();
        publish(&state);
    }
}

fn publish(state: &AppState) {
    let board = state.positions();
    if board.latest.receiver_count() == 0 {
        // Nobody follows: leave nothing stale behind (an empty board sends lookups to the engine).
        board.latest.send_replace(Arc::default());
        return;
    }
    let positions = Positions::from_order(state.engine().queue_order(POSITION_WINDOW), POSITION_WINDOW);
    board.latest.send_replace(Arc::new(positions));
}
