//! A tokio runtime owned by a blocking API (the Pulsar sink and source, millpond-snapshot's
//! archive): its calls and its drop work from any thread, inside another runtime or not.
//!
//! tokio panics when `Runtime::block_on` is called on a thread that is already running a
//! runtime (a `#[tokio::main]` body, a task), and when a runtime is dropped there. A job that
//! opens an instance from async code must not hit either, so [`OwnRuntime::block_on`] moves
//! to a helper thread when the calling thread has a runtime of its own, and the drop shuts
//! the runtime down in the background there.

use std::cell::Cell;
use std::future::Future;

use tokio::runtime::{EnterGuard, Handle, Runtime};

thread_local! {
    /// Whether some other runtime was current when this thread entered an `OwnRuntime`
    /// ([`OwnRuntime::enter`]): entering makes `Handle::try_current` see ours, which says
    /// nothing of what the thread runs below it.
    static ENTERED_OVER: Cell<Option<bool>> = const { Cell::new(None) };
}

/// A tokio runtime that a blocking API owns. See the module docs.
///
/// ```
/// let rt = millpond_wal::runtime::OwnRuntime::multi_thread("doc", 1).unwrap();
/// assert_eq!(rt.block_on(async { 1 + 1 }), 2);
/// // Inside another runtime too, where tokio's own `block_on` would panic.
/// let outer = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// assert_eq!(outer.block_on(async { rt.block_on(async { 3 }) }), 3);
/// outer.block_on(async move { drop(rt) }); // and dropped there
/// ```
pub struct OwnRuntime {
    rt: Option<Runtime>,
}

impl std::fmt::Debug for OwnRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnRuntime").finish_non_exhaustive()
    }
}

/// While alive, the thread has entered an [`OwnRuntime`] (tasks spawned go to it).
pub struct OwnEnterGuard<'a> {
    _guard: EnterGuard<'a>,
    before: Option<bool>,
}

impl Drop for OwnEnterGuard<'_> {
    fn drop(&mut self) {
        ENTERED_OVER.with(|c| c.set(self.before));
    }
}

impl OwnRuntime {
    /// A multi-threaded runtime with `workers` worker threads named `name`, IO and time on.
    pub fn multi_thread(name: &str, workers: usize) -> std::io::Result<OwnRuntime> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name(name)
            .enable_all()
            .build()?;
        Ok(OwnRuntime { rt: Some(rt) })
    }

    fn rt(&self) -> &Runtime {
        self.rt.as_ref().expect("only taken by drop")
    }

    /// The runtime's handle.
    pub fn handle(&self) -> &Handle {
        self.rt().handle()
    }

    /// Enters the runtime: what spawns tasks without a handle (object_store's multipart
    /// writer) spawns them here while the guard lives.
    pub fn enter(&self) -> OwnEnterGuard<'_> {
        let before = ENTERED_OVER.with(Cell::get);
        let over = in_other_runtime();
        let guard = self.rt().enter();
        ENTERED_OVER.with(|c| c.set(Some(over)));
        OwnEnterGuard {
            _guard: guard,
            before,
        }
    }

    /// Runs `f` to completion on this runtime and returns its output. On a thread that runs
    /// another runtime, `f` runs on a short-lived helper thread instead (the caller blocks
    /// all the same: use the async API from async code).
    pub fn block_on<F>(&self, f: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        self.block_on_with(|| f)
    }

    /// [`OwnRuntime::block_on`] for a future that cannot move between threads: `make`
    /// creates it on the thread that runs it.
    pub fn block_on_with<F, M>(&self, make: M) -> F::Output
    where
        M: FnOnce() -> F + Send,
        F: Future,
        F::Output: Send,
    {
        if !in_other_runtime() {
            return self.rt().block_on(make());
        }
        std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("millpond-block-on".into())
                .spawn_scoped(s, || self.rt().block_on(make()))
                .expect("spawning a thread")
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

/// Whether this thread has a runtime current other than an `OwnRuntime` it entered.
fn in_other_runtime() -> bool {
    match ENTERED_OVER.with(Cell::get) {
        Some(over) => over,
        None => Handle::try_current().is_ok(),
    }
}

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            if in_other_runtime() {
                // Waiting for its threads would block (and tokio panics) there.
                rt.shutdown_background();
            } else {
                drop(rt);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_on_and_drop_inside_another_runtime() {
        let outer = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let own = OwnRuntime::multi_thread("t", 1).unwrap();
        let got = outer.block_on(async {
            let g = own.enter();
            // Entered ours over another: still a helper thread, not a panic.
            let v = own.block_on(async {
                tokio::task::yield_now().await;
                7
            });
            drop(g);
            v + own.block_on(async { 1 })
        });
        assert_eq!(got, 8);
        // Entered ours from a plain thread: runs directly.
        let _g = own.enter();
        assert_eq!(own.block_on(async { 2 }), 2);
        drop(_g);
        outer.block_on(async move { drop(own) });
    }
}
