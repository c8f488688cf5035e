//! Application instances (spec §4, §6): start messages become containers through the
//! executor, walk BORN → STARTING → RUNNING (→ STOPPING → STOPPED, or CRASHED), and are
//! announced to routers, health managers and the snapshot.
