//! One-off tasks (`task.<uuid>.run`, `task.status`, `task.terminate`, `task.completed`): a
//! container per task, queued as `waiting` while there is no capacity.
