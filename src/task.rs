//! Spawned tasks that end with their owner.
//!
//! A role spawns helpers (the id-mapping and catalogue followers) that run until shutdown.
//! When the role fails and the runtime restarts it with new clients (a broker failover), the
//! helpers of the failed instance must end too: a dropped `JoinHandle` leaves its task running,
//! so each restart would leak a follower with its Kafka consumer.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::task::{JoinError, JoinHandle};

/// A spawned task aborted when this handle is dropped; awaiting it awaits the task.
pub struct OwnedTask<T>(JoinHandle<T>);

impl<T: Send + 'static> OwnedTask<T> {
    /// Spawns `future` on the current runtime, owned by the returned handle.
    pub fn spawn(future: impl Future<Output = T> + Send + 'static) -> Self {
        Self(tokio::spawn(future))
    }
}

impl<T> Future for OwnedTask<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for OwnedTask<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs a command's blocking work (Kafka scans) off the runtime and turns its result into the
/// exit code: `on_ok` for a result, 1 with the error printed otherwise.
pub async fn blocking_command<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    on_ok: impl FnOnce(T) -> std::process::ExitCode,
) -> std::process::ExitCode {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(t)) => on_ok(t),
        Ok(Err(e)) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn dropping_the_handle_ends_the_task_and_awaiting_it_yields_its_output() {
        let done = OwnedTask::spawn(async { 7 });
        assert_eq!(done.await.unwrap(), 7);

        let alive = Arc::new(AtomicBool::new(true));
        let flag = alive.clone();
        struct ClearOnDrop(Arc<AtomicBool>);
        impl Drop for ClearOnDrop {
            fn drop(&mut self) {
                self.0.store(false, Ordering::SeqCst);
            }
        }
        let task = OwnedTask::spawn(async move {
            let _guard = ClearOnDrop(flag);
            std::future::pending::<()>().await;
        });
        tokio::task::yield_now().await;
        assert!(alive.load(Ordering::SeqCst));
        drop(task);
        for _ in 0..100 {
            if !alive.load(Ordering::SeqCst) {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the task outlived its handle");
    }
}
