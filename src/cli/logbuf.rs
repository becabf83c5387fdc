//! The log's writer: formatted lines are appended to a shared buffer, and a thread writes the
//! buffer out at most [`LogBuffer::EVERY`] after its first line, in one `write` for all of them.
//!
//! Under load (one line per postback) the writer thread wakes a few hundred times a second
//! instead of for every few lines, and the tokio workers never wake it (they append under a
//! mutex; only the first line of an empty buffer notifies). Measured against a channel to a
//! writer thread that flushed whenever no line was waiting (tracing-appender's), in
//! alternating runs of the bench's ingest: see `bench/README.md`. No line is ever dropped:
//! past [`LogBuffer::LIMIT`] bytes waiting (a sink that does not keep up), a logging thread
//! waits for the writer. A line reaches the sink within [`LogBuffer::EVERY`]; what is
//! buffered when the process is killed is lost, as it was in a channel.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// Lines waiting, and whether the buffer is closing.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    closing: bool,
}

#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    /// Wakes the writer thread: a first line, a full buffer, or closing.
    work: Condvar,
    /// Wakes logging threads waiting for room.
    room: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        crate::sync::lock(&self.pending)
    }
}

/// The `MakeWriter` for `tracing_subscriber::fmt`: every event's line is appended whole.
#[derive(Clone)]
pub struct LogBuffer {
    shared: Arc<Shared>,
}

/// Keeps the writer thread; dropping it writes out what is left and stops the thread.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl LogBuffer {
    /// How long a line may wait before it is written.
    pub const EVERY: Duration = Duration::from_millis(10);
    /// Bytes waiting past which a logging thread waits for the writer.
    pub const LIMIT: usize = 4 * 1024 * 1024;

    /// Starts the writer thread on `sink` (stderr for the relay).
    pub fn start<W: Write + Send + 'static>(sink: W) -> std::io::Result<(LogBuffer, LogGuard)> {
        let shared = Arc::new(Shared::default());
        let writer = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || write_out(&writer, sink))?;
        Ok((
            LogBuffer {
                shared: Arc::clone(&shared),
            },
            LogGuard {
                shared,
                thread: Some(thread),
            },
        ))
    }

    fn append(&self, line: &[u8]) {
        let mut pending = self.shared.lock();
        while pending.bytes.len() >= Self::LIMIT && !pending.closing {
            self.shared.work.notify_one();
            pending = self
                .shared
                .room
                .wait(pending)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        let first = pending.bytes.is_empty();
        pending.bytes.extend_from_slice(line);
        drop(pending);
        if first {
            self.shared.work.notify_one();
        }
    }
}

/// The writer thread: waits for a first line, lets more gather for [`LogBuffer::EVERY`] (or
/// until the buffer is full or closing), then writes them all at once.
fn write_out<W: Write>(shared: &Shared, mut sink: W) {
    let mut out = Vec::new();
    loop {
        let mut pending = shared.lock();
        while pending.bytes.is_empty() && !pending.closing {
            pending = shared
                .work
                .wait(pending)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        if !pending.closing && pending.bytes.len() < LogBuffer::LIMIT {
            pending = shared
                .work
                .wait_timeout_while(pending, LogBuffer::EVERY, |p| {
                    !p.closing && p.bytes.len() < LogBuffer::LIMIT
                })
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        std::mem::swap(&mut pending.bytes, &mut out);
        let closing = pending.closing;
        drop(pending);
        shared.room.notify_all();
        // Nowhere to report a failed write to the log but the log itself.
        let _ = sink.write_all(&out).and_then(|()| sink.flush());
        out.clear();
        if closing && shared.lock().bytes.is_empty() {
            return;
        }
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.work.notify_one();
        self.shared.room.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One event's line, appended when it is complete (`tracing_subscriber::fmt` writes a
/// formatted event with one `write_all`).
pub struct Line<'a>(&'a LogBuffer);

impl Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogBuffer {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A sink whose bytes the test can read, optionally slow.
    #[derive(Clone, Default)]
    struct Sink {
        bytes: Arc<Mutex<Vec<u8>>>,
        writes: Arc<Mutex<usize>>,
        pause: Option<Duration>,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Some(p) = self.pause {
                std::thread::sleep(p);
            }
            self.bytes.lock().unwrap().extend_from_slice(buf);
            *self.writes.lock().unwrap() += 1;
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8(self.bytes.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn every_line_from_every_thread_is_written_whole_and_in_each_threads_order() {
        let sink = Sink::default();
        let (buffer, guard) = LogBuffer::start(sink.clone()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let buffer = buffer.clone();
                std::thread::spawn(move || {
                    for i in 0..5_000 {
                        let line = format!("thread {t} line {i} {}\n", "x".repeat(i % 300));
                        buffer.make_writer().write_all(line.as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        drop(guard);
        let text = sink.text();
        let mut next = [0usize; 4];
        for line in text.lines() {
            let mut words = line.split(' ');
            let (_, t, _, i) = (words.next(), words.next(), words.next(), words.next());
            let (t, i): (usize, usize) = (t.unwrap().parse().unwrap(), i.unwrap().parse().unwrap());
            assert_eq!(
                i, next[t],
                "thread {t}'s lines in order, none lost: {line:.60}"
            );
            assert_eq!(words.next().unwrap_or("").len(), i % 300, "a whole line");
            next[t] += 1;
        }
        assert_eq!(next, [5_000; 4]);
        assert!(
            *sink.writes.lock().unwrap() < 20_000,
            "lines are written together, not one write each"
        );
    }

    #[test]
    fn a_lone_line_is_written_without_waiting_for_more_or_for_the_guard() {
        let sink = Sink::default();
        let (buffer, _guard) = LogBuffer::start(sink.clone()).unwrap();
        buffer.make_writer().write_all(b"alone\n").unwrap();
        let start = Instant::now();
        while sink.text().is_empty() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(sink.text(), "alone\n");
    }

    #[test]
    fn a_slow_sink_holds_the_loggers_back_instead_of_growing_without_bound() {
        let sink = Sink {
            pause: Some(Duration::from_millis(50)),
            ..Sink::default()
        };
        let (buffer, guard) = LogBuffer::start(sink.clone()).unwrap();
        let line = vec![b'y'; 64 * 1024];
        let mut most = 0;
        for _ in 0..200 {
            buffer.make_writer().write_all(&line).unwrap();
            most = most.max(buffer.shared.lock().bytes.len());
        }
        assert!(
            most <= LogBuffer::LIMIT + line.len(),
            "at most the limit and one line wait: {most}"
        );
        drop(guard);
        assert_eq!(sink.bytes.lock().unwrap().len(), 200 * line.len());
    }
}
