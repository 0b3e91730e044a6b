//! Helpers shared by the real-socket tests: nodes on loopback (127.0.0.1, OS-assigned ports)
//! that stop when they drop, and polling bounded in time.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use bitorch_network::sync::{self, Response, SyncBlock};
use bitorch_network::{
    spawn, Config, Event, Handle, Multiaddr, NodeKey, PeerId, StageInbound, Topic,
};
use libp2p::futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, tcp, yamux, StreamProtocol, Swarm};
use std::future::Future;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub const TEST_TIMEOUT: Duration = Duration::from_secs(30);
pub const BAN: Duration = Duration::from_secs(3);

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// `/ip4/127.0.0.1/tcp/0`.
pub fn tcp() -> Multiaddr {
    Multiaddr::empty().with(Protocol::Ip4([127, 0, 0, 1].into())).with(Protocol::Tcp(0))
}

/// `/ip4/127.0.0.1/udp/0/quic-v1`.
pub fn quic() -> Multiaddr {
    Multiaddr::empty()
        .with(Protocol::Ip4([127, 0, 0, 1].into()))
        .with(Protocol::Udp(0))
        .with(Protocol::QuicV1)
}

pub fn is_quic(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::QuicV1))
}

pub fn is_tcp(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::Tcp(_)))
}

/// A test configuration listening on loopback TCP, with short intervals and bans.
pub fn config(key: NodeKey, boot_nodes: Vec<Multiaddr>) -> Config {
    config_on(key, vec![tcp()], boot_nodes)
}

/// Like [`config`], listening on `listen`.
pub fn config_on(key: NodeKey, listen: Vec<Multiaddr>, boot_nodes: Vec<Multiaddr>) -> Config {
    let mut c = Config::new(key);
    c.listen = listen;
    c.boot_nodes = boot_nodes;
    c.maintenance_interval = Duration::from_millis(300);
    c.discovery_interval = Duration::from_secs(1);
    c.ban_duration = BAN;
    c.sync_timeout = Duration::from_secs(5);
    // These nodes do not judge gossip, so it is forwarded unchecked; `gossip.rs` tests the
    // validation the real node does.
    c.validate_gossip = false;
    c
}

/// A running node; stopped on drop.
pub struct TestNode {
    pub handle: Handle,
    pub events: Option<mpsc::Receiver<Event>>,
    /// Peers' stage requests (take it to serve them; dropped, they are refused).
    pub stage: Option<mpsc::Receiver<StageInbound>>,
    task: Option<tokio::task::JoinHandle<()>>,
    cancel: CancellationToken,
    /// Its first listen address with `/p2p/<peer id>`.
    pub addr: Multiaddr,
    /// All its listen addresses with `/p2p/<peer id>`, one per entry of `Config::listen`.
    pub addrs: Vec<Multiaddr>,
}

impl TestNode {
    pub async fn start(config: Config) -> TestNode {
        let listeners = config.listen.len();
        let cancel = CancellationToken::new();
        let service = spawn(config, cancel.clone()).expect("spawn");
        let (handle, events, stage, task) =
            (service.handle, service.events, service.stage_requests, service.task);
        let addrs = eventually("every listen address", || {
            let handle = handle.clone();
            async move {
                let addrs = handle.listen_addresses().await.ok()?;
                (addrs.len() >= listeners).then_some(addrs)
            }
        })
        .await;
        let addrs: Vec<Multiaddr> =
            addrs.into_iter().map(|a| a.with(Protocol::P2p(handle.local_peer_id()))).collect();
        let addr = addrs[0].clone();
        TestNode {
            handle,
            events: Some(events),
            stage: Some(stage),
            task: Some(task),
            cancel,
            addr,
            addrs,
        }
    }

    pub fn id(&self) -> PeerId {
        self.handle.local_peer_id()
    }

    /// Its QUIC listen address with `/p2p/<peer id>`.
    pub fn quic_addr(&self) -> Multiaddr {
        self.addrs.iter().find(|a| is_quic(a)).expect("listens on QUIC").clone()
    }

    /// Its TCP listen address with `/p2p/<peer id>`.
    pub fn tcp_addr(&self) -> Multiaddr {
        self.addrs.iter().find(|a| is_tcp(a)).expect("listens on TCP").clone()
    }

    pub async fn peers(&self) -> Vec<PeerId> {
        self.handle.connected_peers().await.expect("service running")
    }

    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("network task ended cleanly");
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Polls `f` every 100 ms until it yields `Some`, for at most 15 s.
pub async fn eventually<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(Duration::from_secs(15), what, f).await
}

/// Polls `f` every 100 ms until it yields `Some`, for at most `limit`.
pub async fn eventually_within<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let poll = async {
        loop {
            if let Some(v) = f().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(limit, poll)
        .await
        .unwrap_or_else(|_| panic!("timed out after {limit:?} waiting for {what}"))
}

/// Answers every sync request with blocks `from..from+max` (block bytes = the height).
pub fn serve_blocks(
    mut events: mpsc::Receiver<Event>,
) -> tokio::task::JoinHandle<Vec<sync::Request>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(event) = events.recv().await {
            if let Event::SyncRequest { request, reply, .. } = event {
                seen.push(request);
                let _ = reply.send(blocks(request));
            }
        }
        seen
    })
}

/// The answer [`serve_blocks`] gives.
pub fn blocks(request: sync::Request) -> Response {
    let blocks = (request.from..request.from + u64::from(request.max))
        .map(|h| SyncBlock { block: h.to_le_bytes().to_vec(), commit: vec![0xc0] })
        .collect();
    Response::Blocks(blocks)
}

/// The heights of blocks served by [`serve_blocks`].
pub fn heights(blocks: &[SyncBlock]) -> Vec<u64> {
    blocks
        .iter()
        .map(|b| u64::from_le_bytes(b.block.as_slice().try_into().expect("8 bytes")))
        .collect()
}

pub async fn run_bounded(test: impl Future<Output = ()>) {
    run_bounded_for(TEST_TIMEOUT, test).await
}

pub async fn run_bounded_for(limit: Duration, test: impl Future<Output = ()>) {
    init_logs();
    tokio::time::timeout(limit, test).await.expect("test took too long");
}

/// Takes every pending event off `rx`; returns the gossip payloads `author` published.
pub fn drain_gossip(rx: &mut mpsc::Receiver<Event>, author: PeerId) -> Vec<Vec<u8>> {
    drain_all_gossip(rx).into_iter().filter(|(who, _)| *who == author).map(|(_, d)| d).collect()
}

/// Takes every pending event off `rx`; returns the consensus gossip as (author, payload).
pub fn drain_all_gossip(rx: &mut mpsc::Receiver<Event>) -> Vec<(PeerId, Vec<u8>)> {
    let mut out = Vec::new();
    while let Ok(event) = rx.try_recv() {
        if let Event::Gossip { topic: Topic::Consensus, author: Some(who), data, .. } = event {
            out.push((who, data));
        }
    }
    out
}

/// Publishes `data-N` from `from` every 200 ms until every receiver has one of them, for at
/// most 15 s. Publishing fails until the peers' subscriptions have arrived, hence the retries.
pub async fn gossip_reaches(from: &TestNode, to: &mut [&mut mpsc::Receiver<Event>], data: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut got = vec![false; to.len()];
    for seq in 0u32.. {
        assert!(tokio::time::Instant::now() < deadline, "gossip {data} did not reach all: {got:?}");
        let _ = from.handle.publish(Topic::Consensus, format!("{data}-{seq}").into_bytes()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        for (rx, got) in to.iter_mut().zip(got.iter_mut()) {
            *got |= drain_gossip(rx, from.id()).iter().any(|d| d.starts_with(data.as_bytes()));
        }
        if got.iter().all(|g| *g) {
            return;
        }
    }
}

/// Writes and reads raw bytes on a request-response protocol, as a broken or hostile peer would.
#[derive(Clone, Copy, Default)]
pub struct RawCodec;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut buf = Vec::new();
        io.take(1 << 20).read_to_end(&mut buf).await?;
        Ok(buf)
    }

    async fn read_response<T>(&mut self, p: &StreamProtocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        self.read_request(p, io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&res).await
    }
}

fn raw_client(
    protocol: StreamProtocol,
    timeout: Duration,
) -> Swarm<request_response::Behaviour<RawCodec>> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
        .expect("transport")
        .with_behaviour(|_| {
            request_response::Behaviour::new(
                [(protocol, ProtocolSupport::Outbound)],
                request_response::Config::default().with_request_timeout(timeout),
            )
        })
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build()
}

/// Sends `bytes` to `target` as a request on `protocol` from a fresh peer; returns that
/// peer and the raw answer, if any came back within `timeout`.
pub async fn send_raw(
    target: &TestNode,
    protocol: StreamProtocol,
    timeout: Duration,
    bytes: Vec<u8>,
) -> (PeerId, Option<Vec<u8>>) {
    let mut client = raw_client(protocol, timeout);
    let me = *client.local_peer_id();
    client.dial(target.addr.clone()).expect("dial");
    client.behaviour_mut().send_request(&target.id(), bytes);
    loop {
        match client.select_next_some().await {
            SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Response { response, .. },
                ..
            }) => return (me, Some(response)),
            SwarmEvent::Behaviour(request_response::Event::OutboundFailure { error, .. }) => {
                tracing::info!(?error, "raw request failed");
                return (me, None);
            }
            _ => {}
        }
    }
}
