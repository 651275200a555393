//! Dynamic VIPAs by the thousand. A test binary of its own: the kernel's work on thousands
//! of addresses holds the lock all of networking shares, which would slow the timed tests
//! of the other binaries were they run beside it.

use std::time::{Duration, Instant};

use vipa_testbed::lab::{owned_by_s1, ClusterEnv, Names};
use vipa_testbed::{require_root, wait_for, Proc};

fn out(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// One test at a time: each holds the kernel busy for seconds.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// s1 and s2 running, `n` IPv6 DVIPAs owned by s1 (backup s2) numbered `2001:db8:1::{group}:1`
/// on, heartbeats every `interval`, quorum `none`.
fn two_nodes(n: usize, group: &str, interval: &str) -> (ClusterEnv, Vec<Proc>) {
    let env = ClusterEnv::build(Names::Unique, 2);
    let d: String = (1..=n).map(|i| owned_by_s1(&format!("2001:db8:1::{group}:{i:x}"), "s2 = 100", "")).collect();
    for k in 1..=2 {
        env.write_config(k, &format!("heartbeat_interval = \"{interval}\"\nquorum = \"none\"\n"), &d);
    }
    let procs = (1..=2).map(|k| env.start_vipad(k)).collect();
    (env, procs)
}

/// Thousands of IPv6 DVIPAs taken over at once: the kernel takes a while to add their
/// addresses (each one makes it walk every multicast group of the NIC), so their local
/// routes come first, and vipad answers neighbour solicitations for them meanwhile.
#[test]
fn ipv6_dvipas_taken_over_by_the_thousand_are_answered_for_before_their_addresses_come() {
    require_root();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const N: usize = 4000;
    let (env, mut procs) = two_nodes(N, "19", "10ms");
    // Every DVIPA of the test is in this prefix.
    const ALL: &str = "2001:db8:1::19:0/112";
    let addresses = |k: usize| env.host(k).addresses_in("en1", ALL).len();
    let started = Instant::now();
    let all = wait_for(Duration::from_secs(60), || (addresses(1) == N).then_some(()));
    eprintln!("s1 had every address {:?} after it started", started.elapsed());
    assert!(all.is_some(), "s1 has {} of {N} addresses\n{}", addresses(1), env.log(1));
    // A client that talked with some of them lately has them in its neighbour cache: each
    // entry must follow the DVIPA to its new holder by the announcements alone, though
    // thousands go out at once (were they sent as fast as the socket takes them, the
    // receive queues on the way would drop thousands). One in ten: the kernel collects
    // stale entries at once beyond 512 in all; the client keeps the rest for an hour.
    let known: Vec<String> = (5..=N).step_by(10).map(|i| format!("2001:db8:1::19:{i:x}")).collect();
    let batch = env.dir.join("neigh.batch");
    let prime = |mac: &str| {
        let lines: String =
            known.iter().map(|a| format!("neigh replace {a} lladdr {mac} dev cl0 nud stale\n")).collect();
        std::fs::write(&batch, lines).expect("batch file");
        env.client.sh(&format!("ip -6 -batch {}", batch.display()));
    };
    let at = |mac: &str| -> usize {
        let entries = env.client.ip_json("-6 neigh show dev cl0");
        let has =
            |a: &String| entries.as_array().into_iter().flatten().any(|e| e["dst"] == a.as_str() && e["lladdr"] == mac);
        known.iter().filter(|a| has(a)).count()
    };
    // By `by`, soon after the move (not after the 10 s refresh a lost announcement would
    // wait for).
    let followed = |k: usize, by: Instant| {
        let mac = env.mac(k);
        let done = at(&mac) == known.len()
            || wait_for(by.saturating_duration_since(Instant::now()), || (at(&mac) == known.len()).then_some(()))
                .is_some();
        assert!(done, "{} of the client's {} entries point at s{k}\n{}", at(&mac), known.len(), env.log(k));
    };
    env.client.sh("sysctl -qw net.ipv6.neigh.cl0.gc_stale_time=3600");
    prime(&env.mac(1));
    assert_eq!(at(&env.mac(1)), known.len(), "the client's entries were not made");
    // Added in order: the last is the last to come.
    let last = format!("2001:db8:1::19:{N:x}");
    let has_last = || !env.host(2).addresses_in("en1", &format!("{last}/128")).is_empty();
    procs[0].kill();
    env.cut(1);
    let taken = Instant::now();
    // Seen without its address before and after a client that knew nothing of it
    // reached it: vipad answered the client's solicitation, and the route took the ping.
    // (The client's entry is flushed first: one it made before vipad answered would have
    // been filled in by the announcement.)
    let answering = |status: &str| status.lines().find(|l| l.starts_with("answers  ")).map(str::to_string);
    let pings = std::cell::RefCell::new(Vec::new());
    let seen = wait_for(Duration::from_secs(10), || {
        if has_last() {
            return Some(Err(format!(
                "the address came {:?} after the cut, before the route was seen alone; pings: {:?}",
                taken.elapsed(),
                pings.borrow()
            )));
        }
        let status = out(&env.vipactl(2, &["status"]));
        if !answering(&status).is_some_and(|l| l.contains(" on en1;")) {
            return None;
        }
        env.client.sh(&format!("ip -6 neigh del {last} dev cl0 2>/dev/null; true"));
        let ping = env.client.try_sh(&format!("ping -6 -c1 -W1 {last}"));
        let reached = ping.is_ok();
        pings.borrow_mut().push(format!("{:?}: {ping:?} {status}", taken.elapsed()));
        // (What vipad counted is read at once, for a stop is due while addresses trail.)
        (reached && !has_last()).then(|| Ok((taken.elapsed(), out(&env.vipactl(2, &["status"])))))
    });
    let status = match seen {
        Some(Ok((after, status))) => {
            eprintln!("reached by its route {after:?} after the cut");
            status
        }
        Some(Err(e)) => panic!("{e}\n{}", env.log(2)),
        None => panic!("never reached on s2 while its address was still to come\n{}", env.log(2)),
    };
    // Stopped now, with no live peer to hand them to, vipad keeps them: it adds the rest of
    // the addresses before it exits, for the kernel answers only for addresses.
    let before_stop = addresses(2);
    assert!(before_stop < N, "every address was there before the stop: the case is not exercised");
    procs[1].signal(libc::SIGTERM);
    // The routes came soon after the cut, and the client's entries followed them within 3 s
    // (a missed announcement would have waited for the 10 s refresh).
    followed(2, taken + Duration::from_secs(3));
    assert_eq!(env.client_neigh(&last), Some(env.mac(2)), "the client learnt s2 from the answer");
    let line = answering(&status).unwrap_or_default();
    assert!(!line.contains(" 0 answered") && line.contains(" 0 invalid dropped"), "{status}");
    let stopped = procs[1].wait_timeout(Duration::from_secs(60));
    eprintln!("s2 had {before_stop} of {N} addresses when told to stop; stopped {:?} after the cut", taken.elapsed());
    assert!(stopped.is_some(), "vipad did not stop\n{}", env.log(2));
    assert_eq!(addresses(2), N, "{}", env.log(2));
    let log = env.log(2);
    assert!(log.contains("stopping once the IPv6 DVIPAs still held here are addresses on their NICs"), "{log}");
    assert!(log.contains("answering neighbour solicitations for IPv6 DVIPAs"), "{log}");
    assert!(log.contains("waits for its address any more"), "{log}");
    env.client.sh("ip -6 neigh flush dev cl0");
    env.client.try_sh(&format!("ping -6 -c1 -W1 {last}")).expect("reachable by its address");

    // s2 runs again and holds them all; the owner's host comes back from a reboot (nothing
    // of vipa's left in its kernel) and takes them back. The kernel takes seconds to delete
    // thousands of addresses, so s2 hands each over as soon as its own address is gone,
    // not once the last one is: s1 has some while s2 still has others, and never one that
    // s2 has too.
    procs[1] = env.start_vipad(2);
    let all_held =
        |k: usize, m: usize| out(&env.vipactl(k, &["status"])).contains(&format!(" {m}/{N} DVIPAs held here"));
    assert!(wait_for(Duration::from_secs(30), || all_held(2, N).then_some(())).is_some(), "{}", env.log(2));
    env.host(1).sh(&format!("ip -6 addr flush dev en1 to {ALL}"));
    env.host(1).sh("ip -6 route flush table local proto 86");
    env.restore(1);
    prime(&env.mac(2));
    procs[0] = env.start_vipad(1);
    let started = Instant::now();
    // s1's first, then s2's: one on both would have been on s2 after s1 had it, and s1 does
    // not give it up meanwhile.
    let dvipas_on = |k: usize| -> std::collections::BTreeSet<String> {
        let h = env.host(k);
        h.addresses_in("en1", ALL).into_iter().chain(h.vipa_local_routes("en1", true)).collect()
    };
    let mut both: Option<(usize, usize, Duration)> = None;
    let mut reached_early: Option<Result<String, String>> = None;
    let handed = wait_for(Duration::from_secs(120), || {
        let (on1, on2) = (dvipas_on(1), dvipas_on(2));
        if let Some(x) = on1.intersection(&on2).next() {
            return Some(Err(format!("{x} on both s1 and s2, {:?} after s1 started", started.elapsed())));
        }
        if !on1.is_empty() && !on2.is_empty() && both.is_none() {
            both = Some((on1.len(), on2.len(), started.elapsed()));
            // One moved already answers a client that never knew it, at s1.
            let first = on1.iter().find(|a| !known.contains(a)).cloned().unwrap_or_default();
            env.client.sh(&format!("ip -6 neigh del {first} dev cl0 2>/dev/null; true"));
            let ping = wait_for(Duration::from_secs(5), || env.client.try_sh(&format!("ping -6 -c1 -W2 {first}")).ok());
            reached_early = Some(match (ping, env.client_neigh(&first)) {
                (Some(_), Some(mac)) if mac == env.mac(1) => Ok(first),
                (ping, mac) => Err(format!("{first}: ping {ping:?}, client's entry {mac:?}")),
            });
        }
        (on1.len() == N && on2.is_empty()).then_some(Ok(started.elapsed()))
    });
    let all_back = Instant::now();
    match handed {
        Some(Ok(after)) => eprintln!("all {N} handed back {after:?} after s1 started; both had some at {both:?}"),
        Some(Err(e)) => panic!("{e}\n{}\n{}", env.log(1), env.log(2)),
        None => panic!("not handed back within 120 s\n{}\n{}", env.log(1), env.log(2)),
    }
    both.expect("s1 had none of them while s2 still had some: the handover waited for the last one");
    assert!(matches!(reached_early, Some(Ok(_))), "{reached_early:?}");
    assert!(all_held(1, N) && all_held(2, 0), "{}", out(&env.vipactl(1, &["status"])));
    followed(1, all_back + Duration::from_secs(2));
    for a in [format!("2001:db8:1::19:{:x}", 1), last.clone()] {
        env.client.sh("ip -6 neigh flush dev cl0");
        env.client.try_sh(&format!("ping -6 -c1 -W2 {a}")).unwrap_or_else(|e| panic!("{a}: {e}"));
        assert_eq!(env.client_neigh(&a), Some(env.mac(1)), "{a}");
    }
}

/// The owner killed while it held a thousand IPv6 DVIPAs comes back with them still in its
/// kernel: it gives the stale copies up, and deleting them outlasts its listening. Marked
/// going, not claimed, they do not make the backup that holds the DVIPAs give them up as
/// to a node that holds them already: it hands them over, each once the owner can take it.
#[test]
fn stale_copies_still_being_deleted_do_not_take_dvipas_from_their_holder() {
    require_root();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const N: usize = 1000;
    // Two-millisecond heartbeats: the listening after a start (a dead interval and one
    // heartbeat, 22 ms) is over well before the kernel has deleted the copies.
    let (env, mut procs) = two_nodes(N, "1a", "2ms");
    const ALL: &str = "2001:db8:1::1a:0/112";
    let addresses = |k: usize| env.host(k).addresses_in("en1", ALL).len();
    let held = |k: usize, m: usize| out(&env.vipactl(k, &["status"])).contains(&format!(" {m}/{N} DVIPAs held here"));
    let all = wait_for(Duration::from_secs(60), || (held(1, N) && addresses(1) == N).then_some(()));
    assert!(all.is_some(), "s1 has {} of {N} addresses\n{}", addresses(1), env.log(1));
    procs[0].kill();
    env.cut(1);
    let taken = wait_for(Duration::from_secs(60), || (held(2, N) && addresses(2) == N).then_some(()));
    assert!(taken.is_some(), "s2 has {} of {N} addresses\n{}", addresses(2), env.log(2));
    assert_eq!(addresses(1), N, "the killed owner's copies were not left in its kernel");
    env.restore(1);
    procs[0] = env.start_vipad(1);
    let back = wait_for(Duration::from_secs(120), || (held(1, N) && held(2, 0)).then_some(()));
    let (log1, log2) = (env.log(1), env.log(2));
    assert!(back.is_some(), "not handed back within 120 s\n{log1}\n{log2}");
    assert!(log1.contains("stale copy from before the restart: s2 holds it"), "{log1}");
    assert!(!log2.contains("s1 also holds it and comes first"), "s2 gave them up as to a holder\n{log2}");
    assert!(log2.contains("handing over to s1"), "{log2}");
    // (The addresses trail their routes; added again this soon after their deletion, they
    // take the kernel longer.)
    let trailed = wait_for(Duration::from_secs(60), || (addresses(1) == N).then_some(()));
    assert!(trailed.is_some(), "s1 has {} of {N} addresses\n{}", addresses(1), env.log(1));
}
