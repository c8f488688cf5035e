//! Memory and disk accounting (spec §7): capacity × overcommit factor minus every
//! reservation. Reservations are explicit and keyed by their owner's id (an instance id, a
//! task id, a staging task id), so a check and the reservation that follows it are one step
//! under one lock and two concurrent starts can never both take the last megabytes.

use std::collections::HashMap;
use std::sync::Mutex;

/// An amount of memory and disk, in MB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Amount {
    pub memory_mb: u64,
    pub disk_mb: u64,
}

/// Why a reservation was refused; disk is checked first, as the DEA does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Insufficient {
    #[error("Not enough memory resource available.")]
    Memory,
    #[error("Not enough disk resource available.")]
    Disk,
}

/// The cell's capacity and who holds what of it.
#[derive(Debug)]
pub struct Resources {
    capacity: Amount,
    held: Mutex<HashMap<String, Amount>>,
    /// Bumped whenever something is given back, so waiting work (queued tasks) can retry.
    freed: tokio::sync::watch::Sender<u64>,
}

impl Resources {
    pub fn new(capacity: Amount) -> Resources {
        Resources {
            capacity,
            held: Mutex::new(HashMap::new()),
            freed: tokio::sync::watch::Sender::new(0),
        }
    }

    pub fn capacity(&self) -> Amount {
        self.capacity
    }

    /// Changes whenever a reservation shrinks or is released.
    pub fn freed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.freed.subscribe()
    }

    fn remaining_of(&self, held: &HashMap<String, Amount>) -> Amount {
        let used = held.values().fold(Amount::default(), |a, h| Amount {
            memory_mb: a.memory_mb.saturating_add(h.memory_mb),
            disk_mb: a.disk_mb.saturating_add(h.disk_mb),
        });
        Amount {
            memory_mb: self.capacity.memory_mb.saturating_sub(used.memory_mb),
            disk_mb: self.capacity.disk_mb.saturating_sub(used.disk_mb),
        }
    }

    /// What is left for new work (advertised as `available_memory`/`available_disk`).
    pub fn remaining(&self) -> Amount {
        self.remaining_of(&self.held.lock().unwrap())
    }

    /// Whether `want` would fit now (no reservation is made).
    pub fn could_reserve(&self, want: Amount) -> Result<(), Insufficient> {
        Self::fits(self.remaining(), want)
    }

    fn fits(left: Amount, want: Amount) -> Result<(), Insufficient> {
        if want.disk_mb > left.disk_mb {
            return Err(Insufficient::Disk);
        }
        if want.memory_mb > left.memory_mb {
            return Err(Insufficient::Memory);
        }
        Ok(())
    }

    /// Reserve `want` for `owner`, replacing what `owner` held before (so a grown or shrunk
    /// reservation is checked against everything else).
    pub fn reserve(&self, owner: &str, want: Amount) -> Result<(), Insufficient> {
        let mut held = self.held.lock().unwrap();
        let previous = held.remove(owner);
        match Self::fits(self.remaining_of(&held), want) {
            Ok(()) => {
                held.insert(owner.to_string(), want);
                Ok(())
            }
            Err(e) => {
                if let Some(p) = previous {
                    held.insert(owner.to_string(), p);
                }
                Err(e)
            }
        }
    }

    /// Keep only part of a reservation without any check (a CRASHED instance keeps its disk
    /// and gives back its memory).
    pub fn shrink(&self, owner: &str, keep: Amount) {
        let mut held = self.held.lock().unwrap();
        if let Some(h) = held.get_mut(owner) {
            h.memory_mb = h.memory_mb.min(keep.memory_mb);
            h.disk_mb = h.disk_mb.min(keep.disk_mb);
        }
        drop(held);
        self.freed.send_modify(|n| *n += 1);
    }

    /// Give back everything `owner` holds.
    pub fn release(&self, owner: &str) {
        self.held.lock().unwrap().remove(owner);
        self.freed.send_modify(|n| *n += 1);
    }

    /// What `owner` holds now.
    pub fn held_by(&self, owner: &str) -> Option<Amount> {
        self.held.lock().unwrap().get(owner).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mb(memory_mb: u64, disk_mb: u64) -> Amount {
        Amount { memory_mb, disk_mb }
    }

    #[test]
    fn reservations_add_up_and_refuse_disk_first() {
        let r = Resources::new(mb(1024, 2048));
        r.reserve("a", mb(512, 1024)).unwrap();
        assert_eq!(r.remaining(), mb(512, 1024));
        assert_eq!(r.reserve("b", mb(600, 1100)), Err(Insufficient::Disk));
        assert_eq!(r.reserve("b", mb(600, 100)), Err(Insufficient::Memory));
        r.reserve("b", mb(512, 1024)).unwrap();
        assert_eq!(r.remaining(), mb(0, 0));
        r.shrink("a", mb(0, u64::MAX));
        assert_eq!(r.remaining(), mb(512, 0));
        r.release("a");
        r.release("b");
        assert_eq!(r.remaining(), mb(1024, 2048));
    }

    #[test]
    fn a_refused_change_keeps_the_old_reservation() {
        let r = Resources::new(mb(100, 100));
        r.reserve("a", mb(50, 50)).unwrap();
        assert!(r.reserve("a", mb(150, 50)).is_err());
        assert_eq!(r.held_by("a"), Some(mb(50, 50)));
        r.reserve("a", mb(100, 100)).unwrap();
        assert_eq!(r.remaining(), mb(0, 0));
    }
}
