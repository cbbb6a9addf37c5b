//! The async twins of the blocking calls: each runs its blocking twin on a thread of its own
//! and resolves when it returns, so no executor thread blocks and no runtime is required.

use std::future::Future;

use crate::error::{Error, Result};

/// Runs `work` on a new thread named `name`; the future resolves with what it returned (a
/// panic in `work` resumes in the awaiting task). Open, recover, snapshot and close are rare
/// and long compared with a thread's start, so a thread each costs nothing that shows.
pub(crate) fn off_thread<T, W>(name: &str, work: W) -> impl Future<Output = Result<T>>
where
    T: Send + 'static,
    W: FnOnce() -> Result<T> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)));
        });
    async move {
        spawned.map_err(|source| Error::Io {
            path: "spawning a thread".to_owned(),
            source,
        })?;
        match rx.await {
            Ok(Ok(result)) => result,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            // The thread always sends before it ends, panic or not.
            Err(_) => Err(Error::Closed),
        }
    }
}
