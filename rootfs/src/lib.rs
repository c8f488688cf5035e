//! Root filesystems for containers.
