//! Holds the packets queued to netfilter's queue in a network namespace for a fixed delay,
//! until killed: latency for `scripts/netns-testnet.sh --delay` (the kernel has no `netem`).
//!
//! `netdelay NAMESPACE DELAY_MS [QUEUE]`, with a rule such as
//! `ip netns exec NAMESPACE iptables -t mangle -A PREROUTING -i DEV -j NFQUEUE --queue-num 0 --queue-bypass`.

#[cfg(target_os = "linux")]
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: netdelay NAMESPACE DELAY_MS [QUEUE]";
    let (Some(ns), Some(ms)) = (args.first(), args.get(1).and_then(|s| s.parse::<u64>().ok()))
    else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let queue = match args.get(2).map(|s| s.parse::<u16>()) {
        None => 0,
        Some(Ok(q)) => q,
        Some(Err(e)) => {
            eprintln!("QUEUE: {e}\n{usage}");
            std::process::exit(2);
        }
    };
    let path = std::path::Path::new("/run/netns").join(ns);
    let delay = std::time::Duration::from_millis(ms);
    let delayer = match bitorch_test_support::netdelay::Delayer::start(&path, queue, delay) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("netdelay: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("netdelay: holding queue {queue} in {ns} for {ms} ms");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
        let c = delayer.counters();
        eprintln!(
            "netdelay: {} packets, at most {} held at once",
            c.packets.load(std::sync::atomic::Ordering::Relaxed),
            c.most_held.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("netdelay needs Linux (netfilter's queue)");
    std::process::exit(1);
}
