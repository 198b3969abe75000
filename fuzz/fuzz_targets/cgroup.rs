//! `/proc/PID/cgroup` (any process → agent: a container runtime picks the
//! paths): any text gives a placement, and the filters never panic on it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tcpq_agent::owner::cgroup::{cgroup_matches, container_matches, parse};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let p = parse(&text);
    // A placement matches its own cgroup and container (a path under
    // /sys is taken for the cgroup2 mount point and stripped; a filter is
    // trimmed of white space, so a path ending in some is not its own).
    if !p.cgroup.is_empty() && !p.cgroup.starts_with("/sys") && p.cgroup.trim() == p.cgroup {
        assert!(cgroup_matches(&p, &p.cgroup), "{p:?}");
    }
    if let Some(id) = &p.container_id {
        assert!(container_matches(&p, id), "{p:?}");
    }
    // Filters taken from the same bytes (a --cgroup / --container value).
    for wanted in text.lines().take(4) {
        let _ = cgroup_matches(&p, wanted);
        let _ = container_matches(&p, wanted);
    }
});
