//! Latency for test beds made of network namespaces, where the kernel has no `netem`: a thread
//! that enters a namespace, takes the packets `iptables … -j NFQUEUE` queues there (netfilter's
//! queue, in the kernel as `CONFIG_NETFILTER_NETLINK_QUEUE`), holds each for a fixed delay and
//! lets it go, in order. A host whose incoming packets are held `d` adds `d` to every round trip
//! through it; two such hosts are `2d` apart. Hold incoming packets (`-t mangle -A PREROUTING -i
//! DEV`), not outgoing ones: a packet held in its sender's stack still counts against the
//! socket's TCP Small Queues limit, so the sender's next small writes wait for it, which no wire
//! does.
//!
//! The iptables rule should carry `--queue-bypass`: when no delayer is bound to the queue (it
//! stopped, or the test died), packets pass instead of being dropped. The kernel's queue takes
//! up to 65,536 packets and lets the rest through undelayed ("fail open") rather than drop them.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a delayer did.
#[derive(Debug, Default)]
pub struct Counters {
    /// Packets held and released.
    pub packets: AtomicU64,
    /// The most packets held at once.
    pub most_held: AtomicU64,
}

/// A running delayer; stopping it (or dropping it) releases what it holds at once.
pub struct Delayer {
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl Delayer {
    /// Holds every packet queued to `queue` in the network namespace at `namespace` (a file such
    /// as `/run/netns/NAME`) for `delay`. Returns once the queue is bound, so that the packets of
    /// a rule added afterwards are all delayed.
    pub fn start(namespace: &Path, queue: u16, delay: Duration) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let (ready_tx, ready_rx) = mpsc::channel();
        let namespace: PathBuf = namespace.to_owned();
        let thread = {
            let (stop, counters) = (stop.clone(), counters.clone());
            std::thread::Builder::new().name(format!("netdelay-{queue}")).spawn(move || {
                let queue_handle = match bind(&namespace, queue) {
                    Ok(q) => {
                        let _ = ready_tx.send(Ok(()));
                        q
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return Ok(());
                    }
                };
                hold(queue_handle, queue, delay, &stop, &counters)
            })?
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self { stop, counters, thread: Some(thread) }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(io::Error::other("the delayer's thread ended before binding")),
        }
    }

    /// What it did so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Stops: releases what it holds and unbinds; the error the thread ended with, if any.
    pub fn stop(mut self) -> io::Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> io::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(io::Error::other("the delayer's thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for Delayer {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Enters the namespace (this thread only) and binds the queue there.
fn bind(namespace: &Path, queue: u16) -> io::Result<nfq::Queue> {
    let file = std::fs::File::open(namespace)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", namespace.display())))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| io::Error::other(format!("entering {}: {e}", namespace.display())))?;
    let mut q = nfq::Queue::open()?;
    q.bind(queue)?;
    // Only the packets' metadata comes up: the verdict does not change them.
    q.set_copy_range(queue, 0)?;
    q.set_queue_max_len(queue, 65_536)?;
    q.set_fail_open(queue, true)?;
    q.set_nonblocking(true);
    Ok(q)
}

/// Takes what arrives, releases what is due, and sleeps until the next is due (at most 1 ms,
/// so new packets are taken within a millisecond).
fn hold(
    mut q: nfq::Queue,
    queue: u16,
    delay: Duration,
    stop: &AtomicBool,
    counters: &Counters,
) -> io::Result<()> {
    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
    let result = loop {
        if stop.load(Ordering::Relaxed) {
            break Ok(());
        }
        let mut failed = None;
        loop {
            match q.recv() {
                Ok(msg) => held.push_back((Instant::now() + delay, msg)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            break Err(e);
        }
        counters.most_held.fetch_max(held.len() as u64, Ordering::Relaxed);
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            let (_, msg) = held.pop_front().expect("checked");
            release(&mut q, msg)?;
            counters.packets.fetch_add(1, Ordering::Relaxed);
        }
        let wait = held
            .front()
            .map_or(Duration::from_millis(1), |(due, _)| due.saturating_duration_since(now))
            .min(Duration::from_millis(1));
        std::thread::sleep(wait);
    };
    for (_, msg) in held.drain(..) {
        release(&mut q, msg)?;
    }
    q.unbind(queue)?;
    result
}

fn release(q: &mut nfq::Queue, mut msg: nfq::Message) -> io::Result<()> {
    msg.set_verdict(nfq::Verdict::Accept);
    q.verdict(msg)
}
