//! The wire: replies only from the session asked, and nothing an
//! unauthenticated peer sends (parts, connections, hellos) grows the
//! master without bound or shuts accepted peers out.

use super::*;
use tend_proto::v1::{Reply, RunResult, reply};

/// Finding 1: an accepted minion "mallory" answers request ids it was
/// never sent (ids were sequential, and a reply was matched by id alone),
/// claiming web1's run printed its text and failed.
#[test]
fn finding_1_a_reply_from_another_session_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut master = Master::new(&tmp.path().join("master"), "");
    master.start();
    let mut web1 = Minion::new(&tmp.path().join("web1"), "web1", &master, "");
    web1.start();
    master.wait_connected("web1");
    let mallory = handshake(
        &master.command_endpoint,
        Arc::new(Identity::ephemeral().unwrap()),
        "mallory",
        PeerKind::Minion,
    )
    .unwrap();

    let control = master.control.clone();
    let run = std::thread::spawn(move || {
        tend_e2e::tend_at(
            &control,
            &["run", "web1", "--json", "--", "sleep 2; echo REAL"],
        )
    });
    // While web1 works, mallory answers every small id, over and over:
    // the ids the old master handed out in sequence.
    let mut forged = 0u64;
    while !run.is_finished() {
        for id in 1..=300u64 {
            let frame = mallory.seal(minion_message::Body::Reply(Reply {
                id,
                body: Some(reply::Body::Run(RunResult {
                    job: 0,
                    status: 1,
                    stdout: "FORGED by mallory\n".into(),
                    stderr: String::new(),
                })),
            }));
            mallory.socket.send(frame, 0).unwrap();
            forged += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = run.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let job: serde_json::Value = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .last()
        .unwrap_or_else(|| panic!("no JSON from tend run: {text}"));
    let result = &job["minions"][0];
    assert_eq!(result["minion"], "web1", "{job}");
    assert!(
        !text.contains("FORGED"),
        "mallory's output was shown as web1's: {text}"
    );
    assert!(
        text.contains("REAL"),
        "web1's own output is missing: {text}"
    );
    assert_eq!(result["status"], "ok", "a forged failed result: {job}");
    assert_eq!(job["status"], "ok", "{job}");
    // Every forged reply was refused and counted.
    wait_until(
        Duration::from_secs(20),
        "every forged reply to be counted as refused",
        || (counter(&master, "bus_replies_refused") >= forged).then_some(()),
    );
}
