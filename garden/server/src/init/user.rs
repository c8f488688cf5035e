//! Users, groups and environment of a process, resolved the way Guardian does from the
//! container's own /etc/passwd and /etc/group. Pure functions over file contents, so they are
//! tested without a container.

/// A resolved user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups from /etc/group, without the primary one (none inherited).
    pub groups: Vec<u32>,
    pub home: String,
    /// The name to report in `USER` when the caller did not set it.
    pub name: String,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 || line.starts_with('#') {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn group_entries(group: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    group.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 || line.starts_with('#') {
            return None;
        }
        Some(GroupEntry {
            name: f[0],
            gid: f[2].parse().ok()?,
            members: f[3].split(',').filter(|m| !m.is_empty()).collect(),
        })
    })
}

/// Exactly the groups /etc/group lists `name` in, as Guardian sets them: the primary group is
/// not added.
fn supplementary(group: &str, name: &str) -> Vec<u32> {
    let mut gids = Vec::new();
    for g in group_entries(group) {
        if g.members.contains(&name) && !gids.contains(&g.gid) {
            gids.push(g.gid);
        }
    }
    gids
}

/// Resolve `spec` (`""` = root, `name`, `uid:gid`, `name:group`, `uid`) against the files'
/// contents (empty when the image lacks them).
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<User, String> {
    let not_found = || format!("unable to find user {spec}: no matching entries in passwd file");
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user_part = if user_part.is_empty() {
        "root"
    } else {
        user_part
    };

    let entry = match user_part.parse::<u32>() {
        Ok(uid) => passwd_entries(passwd).find(|e| e.uid == uid),
        Err(_) => passwd_entries(passwd).find(|e| e.name == user_part),
    };
    let (uid, mut gid, home, name) = match (&entry, user_part.parse::<u32>()) {
        (Some(e), _) => (e.uid, e.gid, e.home.to_string(), e.name.to_string()),
        (None, Ok(uid)) => (uid, uid, "/".to_string(), user_part.to_string()),
        (None, Err(_)) if user_part == "root" => (0, 0, "/root".to_string(), "root".to_string()),
        (None, Err(_)) => return Err(not_found()),
    };
    if let Some(g) = group_part {
        gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(group)
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| {
                    format!("unable to find group {g}: no matching entries in group file")
                })?,
        };
    }
    let groups = match &entry {
        Some(e) => supplementary(group, e.name),
        None => Vec::new(),
    };
    Ok(User {
        uid,
        gid,
        groups,
        home,
        name: if spec.is_empty() { "root".into() } else { name },
    })
}

/// Merge `KEY=value` lists: a later duplicate overrides the value but keeps the first position.
/// Then add `PATH`, `USER` and `HOME` when absent.
pub fn merge_env(entries: &[String], user: &User, user_spec: &str) -> Vec<String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for e in entries {
        let (k, v) = e.split_once('=').unwrap_or((e.as_str(), ""));
        match out.iter_mut().find(|(key, _)| key == k) {
            Some(slot) => slot.1 = v.to_string(),
            None => out.push((k.to_string(), v.to_string())),
        }
    }
    let has = |out: &Vec<(String, String)>, k: &str| out.iter().any(|(key, _)| key == k);
    if !has(&out, "PATH") {
        let path = if user.uid == 0 {
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        } else {
            "/usr/local/bin:/usr/bin:/bin"
        };
        out.push(("PATH".into(), path.into()));
    }
    if !has(&out, "USER") {
        let name = if user_spec.is_empty() {
            "root".to_string()
        } else {
            user.name.clone()
        };
        out.push(("USER".into(), name));
    }
    if !has(&out, "HOME") {
        out.push(("HOME".into(), user.home.clone()));
    }
    out.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The value of `key` in a merged environment.
pub fn env_get<'a>(env: &'a [String], key: &str) -> Option<&'a str> {
    env.iter()
        .find_map(|e| e.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nalice:x:1000:\nwheel:x:10:alice,bob\nstaff:x:50:\n";

    #[test]
    fn resolves_names_ids_and_groups() {
        let u = resolve("alice", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (1000, 1000, "/home/alice"));
        assert_eq!(u.groups, vec![10]);
        let u = resolve("", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid, u.name.as_str()), (0, 0, "root"));
        let u = resolve("1000000000:1000000000", "", "").unwrap();
        assert_eq!(
            (u.uid, u.gid, u.home.as_str()),
            (1_000_000_000, 1_000_000_000, "/")
        );
        let u = resolve("alice:staff", PASSWD, GROUP).unwrap();
        assert_eq!(u.gid, 50);
        assert_eq!(resolve("root", "", "").unwrap().uid, 0);
        assert_eq!(
            resolve("bob", PASSWD, GROUP).unwrap_err(),
            "unable to find user bob: no matching entries in passwd file"
        );
    }

    #[test]
    fn env_merge_keeps_first_position_and_adds_defaults() {
        let root = resolve("", PASSWD, GROUP).unwrap();
        let env = merge_env(
            &[
                "CONTAINER_ENV=1".into(),
                "TEST=hi".into(),
                "TEST=hello".into(),
                "FRUIT=banana".into(),
            ],
            &root,
            "",
        );
        assert_eq!(
            env,
            vec![
                "CONTAINER_ENV=1",
                "TEST=hello",
                "FRUIT=banana",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "USER=root",
                "HOME=/root"
            ]
        );
        let alice = resolve("alice", PASSWD, GROUP).unwrap();
        let env = merge_env(&["HOME=/elsewhere".into()], &alice, "alice");
        assert_eq!(env_get(&env, "PATH"), Some("/usr/local/bin:/usr/bin:/bin"));
        assert_eq!(env_get(&env, "USER"), Some("alice"));
        assert_eq!(env_get(&env, "HOME"), Some("/elsewhere"));
    }
}
