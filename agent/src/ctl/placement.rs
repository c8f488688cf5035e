//! The controller's placement of app instances and tasks over agents' advertisements (spec
//! §7): keep the agents with the stack, enough memory and enough disk; then the zone with the
//! fewest instances of the app; then the agents there with the fewest instances of the app;
//! then the upper half by available memory; pick one at random. The chosen agent's
//! advertisement is decremented (memory, disk) and its app count bumped, so a burst of
//! placements spreads out before the next advertisement arrives.

use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use rand::Rng;

use crate::protocol::Advertise;

/// What one instance (or task) needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    pub stack: String,
    pub memory_mb: u64,
    pub disk_mb: u64,
    /// The app whose instances are spread; empty for a task.
    pub app_id: String,
}

/// Agents known from their latest advertisement.
#[derive(Debug, Clone, Default)]
pub struct Pool {
    pub agents: Vec<Advertise>,
}

impl Pool {
    pub fn new(agents: Vec<Advertise>) -> Pool {
        Pool { agents }
    }

    fn app_count(ad: &Advertise, app: &str) -> u64 {
        ad.app_id_to_count.get(app).copied().unwrap_or(0)
    }

    /// Indices of the agents §7 would choose among for `need`, before the random pick.
    pub fn candidates(&self, need: &Need) -> Vec<usize> {
        let fit: Vec<usize> = (0..self.agents.len())
            .filter(|&i| {
                let a = &self.agents[i];
                a.stacks.iter().any(|s| s == &need.stack)
                    && a.available_disk >= need.disk_mb
                    && a.available_memory >= need.memory_mb
            })
            .collect();
        if fit.is_empty() {
            return fit;
        }
        // Instances of the app per zone, counted over every agent of the zone.
        let mut per_zone: BTreeMap<&str, u64> = BTreeMap::new();
        for a in &self.agents {
            *per_zone
                .entry(a.placement_properties.zone.as_str())
                .or_default() += Self::app_count(a, &need.app_id);
        }
        let zone_of = |i: usize| self.agents[i].placement_properties.zone.as_str();
        let best_zone = fit.iter().map(|&i| per_zone[zone_of(i)]).min().unwrap_or(0);
        let fit: Vec<usize> = fit
            .into_iter()
            .filter(|&i| per_zone[zone_of(i)] == best_zone)
            .collect();
        let fewest = fit
            .iter()
            .map(|&i| Self::app_count(&self.agents[i], &need.app_id))
            .min()
            .unwrap_or(0);
        let mut fit: Vec<usize> = fit
            .into_iter()
            .filter(|&i| Self::app_count(&self.agents[i], &need.app_id) == fewest)
            .collect();
        fit.sort_by(|&a, &b| {
            self.agents[b]
                .available_memory
                .cmp(&self.agents[a].available_memory)
        });
        fit.truncate(fit.len().div_ceil(2));
        fit
    }

    /// Choose an agent for `need` and account for it locally; `None` when nothing fits.
    pub fn place(&mut self, need: &Need, rng: &mut impl Rng) -> Option<String> {
        let &i = self.candidates(need).choose(rng)?;
        let a = &mut self.agents[i];
        a.available_memory -= need.memory_mb;
        a.available_disk -= need.disk_mb;
        if !need.app_id.is_empty() {
            *a.app_id_to_count.entry(need.app_id.clone()).or_default() += 1;
        }
        Some(a.id.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::PlacementProperties;
    use rand::SeedableRng;

    fn ad(id: &str, zone: &str, mem: u64, apps: &[(&str, u64)]) -> Advertise {
        Advertise {
            id: id.into(),
            stacks: vec!["busybox".into()],
            url: None,
            available_memory: mem,
            available_disk: 10_000,
            app_id_to_count: apps.iter().map(|(a, n)| (a.to_string(), *n)).collect(),
            placement_properties: PlacementProperties { zone: zone.into() },
        }
    }

    fn need(mem: u64) -> Need {
        Need {
            stack: "busybox".into(),
            memory_mb: mem,
            disk_mb: 100,
            app_id: "app".into(),
        }
    }

    fn ids(pool: &Pool, n: &Need) -> Vec<String> {
        let mut v: Vec<String> = pool
            .candidates(n)
            .into_iter()
            .map(|i| pool.agents[i].id.clone())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn filters_by_stack_memory_and_disk() {
        let mut other_stack = ad("s", "z", 4096, &[]);
        other_stack.stacks = vec!["cflinuxfs2".into()];
        let mut no_disk = ad("d", "z", 4096, &[]);
        no_disk.available_disk = 50;
        let pool = Pool::new(vec![
            other_stack,
            no_disk,
            ad("m", "z", 100, &[]),
            ad("ok", "z", 4096, &[]),
        ]);
        assert_eq!(ids(&pool, &need(256)), ["ok"]);
        let mut n = need(256);
        n.stack = "windows".into();
        assert!(pool.candidates(&n).is_empty());
        let mut pool = pool;
        assert_eq!(pool.place(&n, &mut rand::thread_rng()), None);
    }

    #[test]
    fn prefers_the_zone_then_the_agent_with_fewest_instances() {
        // Zone a holds 3 instances of the app, zone b 1: zone b wins even though a1 has none.
        let pool = Pool::new(vec![
            ad("a1", "a", 4096, &[]),
            ad("a2", "a", 4096, &[("app", 3)]),
            ad("b1", "b", 4096, &[("app", 1)]),
            ad("b2", "b", 1024, &[("other", 7)]),
        ]);
        assert_eq!(ids(&pool, &need(256)), ["b2"]);
    }

    #[test]
    fn keeps_the_upper_half_by_available_memory() {
        let pool = Pool::new(vec![
            ad("m1", "z", 1000, &[]),
            ad("m2", "z", 2000, &[]),
            ad("m3", "z", 3000, &[]),
            ad("m4", "z", 4000, &[]),
            ad("m5", "z", 5000, &[]),
        ]);
        assert_eq!(ids(&pool, &need(256)), ["m3", "m4", "m5"]);
    }

    #[test]
    fn consecutive_placements_spread_and_decrement() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut pool = Pool::new(vec![ad("x", "z", 1024, &[]), ad("y", "z", 1024, &[])]);
        let mut placed: BTreeMap<String, u32> = BTreeMap::new();
        for _ in 0..4 {
            *placed
                .entry(pool.place(&need(256), &mut rng).unwrap())
                .or_default() += 1;
        }
        assert_eq!(placed, BTreeMap::from([("x".into(), 2), ("y".into(), 2)]));
        assert!(pool.agents.iter().all(|a| a.available_memory == 512
            && a.available_disk == 9_800
            && a.app_id_to_count["app"] == 2));
        // 512 MB left on each: two more of 512 fit, a third does not.
        assert!(pool.place(&need(512), &mut rng).is_some());
        assert!(pool.place(&need(512), &mut rng).is_some());
        assert_eq!(pool.place(&need(512), &mut rng), None);
    }

    #[test]
    fn tasks_go_to_the_agent_with_most_memory_among_equals() {
        let mut pool = Pool::new(vec![ad("small", "z", 300, &[]), ad("big", "z", 3000, &[])]);
        let task = Need {
            app_id: String::new(),
            ..need(256)
        };
        for _ in 0..5 {
            assert_eq!(pool.place(&task, &mut rand::thread_rng()).unwrap(), "big");
        }
    }
}
