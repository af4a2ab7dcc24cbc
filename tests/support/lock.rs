//! Holds a log file's SQLite write lock from another connection (another process, in effect),
//! for tests of what the journal does while it cannot write.

use std::path::Path;

/// The lock, held until [`Lock::release`] (or the end of the test).
pub struct Lock(Option<std::sync::mpsc::Sender<()>>, Option<std::thread::JoinHandle<()>>);

impl Lock {
    /// Lets the lock go and waits until it is gone.
    pub fn release(&mut self) {
        drop(self.0.take());
        if let Some(t) = self.1.take() {
            t.join().unwrap();
        }
    }
}

/// Takes the write lock on `path`; returns once it is held.
pub fn hold_write_lock(path: &Path) -> Lock {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let path = path.to_owned();
    let t = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            use sqlx::Connection;
            let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                .await
                .unwrap();
            sqlx::query("BEGIN IMMEDIATE").execute(&mut conn).await.unwrap();
            ready_tx.send(()).unwrap();
            let _ = tokio::task::spawn_blocking(move || rx.recv()).await;
            sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
        });
    });
    ready_rx.recv().unwrap();
    Lock(Some(tx), Some(t))
}
