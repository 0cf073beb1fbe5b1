//! A command's output is read through a bounded buffer on the minion: a
//! command printing gigabytes costs the minion no more memory than one
//! printing a page, and what is kept says where it was cut.

use tend_e2e::{Master, Minion};

/// The minion's peak resident memory so far, in KiB (VmHWM).
fn peak_kib(minion: &mut Minion) -> u64 {
    let pid = minion.daemon().child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}

/// What the minion may reach, whatever its commands print: far below the
/// gigabytes they print here.
const PEAK_LIMIT_KIB: u64 = 150 * 1024;

#[test]
fn issue_14_item_3_command_output_is_read_in_a_bounded_buffer() {
    let tmp = tempfile::tempdir().unwrap();
    let mut master = Master::new(&tmp.path().join("master"), "");
    master.state_file(
        "flood.toml",
        "[flood]\ntype = \"cmd.run\"\ncommand = [\"head\", \"-c\", \"1G\", \"/dev/zero\"]\ntimeout = 120\n",
    );
    master.start();
    let mut minion = Minion::new(&tmp.path().join("web1"), "web1", &master, "");
    minion.start();
    master.wait_connected("web1");
    let before = peak_kib(&mut minion);

    // `tend run`: 2 GiB on stdout.
    let out = master.tend(&[
        "run",
        "web1",
        "--timeout",
        "120",
        "--",
        "head",
        "-c",
        "2G",
        "/dev/zero",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.len() < 256 * 1024, "{} bytes shown", text.len());
    assert!(
        text.contains("[output cut: 65536 of 2147483648 bytes kept]"),
        "{}",
        &text[text.len().saturating_sub(200)..]
    );
    let peak = peak_kib(&mut minion);
    assert!(
        peak < PEAK_LIMIT_KIB,
        "the minion peaked at {peak} KiB (from {before} KiB) for a command printing 2 GiB"
    );

    // A `cmd.run` state: 1 GiB on stdout.
    let job = &master.tend_json(&["apply", "web1", "flood"])[0];
    assert_eq!(job["status"], "changed", "{}", job["minions"][0]["error"]);
    let stdout = job["minions"][0]["states"][0]["changes"]["stdout"]
        .as_str()
        .expect("the state's stdout in the job")
        .to_string();
    assert!(stdout.len() < 128 * 1024, "{} bytes kept", stdout.len());
    assert!(
        stdout.ends_with("[output cut: 65536 of 1073741824 bytes kept]"),
        "{}",
        &stdout[stdout.len().saturating_sub(200)..]
    );
    let peak = peak_kib(&mut minion);
    assert!(
        peak < PEAK_LIMIT_KIB,
        "the minion peaked at {peak} KiB (from {before} KiB) for a state printing 1 GiB"
    );
}
