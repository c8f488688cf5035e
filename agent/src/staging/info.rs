//! `staging_info.yml` (spec §5.1 step 5): what the buildpack's release step and the app's
//! Procfile say the app runs, with `meta.command` overriding both.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The file at the root of a droplet; the instance side reads `start_command`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagingInfo {
    pub buildpack_path: String,
    pub detected_buildpack: String,
    pub start_command: Option<String>,
    pub effective_procfile: BTreeMap<String, String>,
}

/// What a runner that failed left in `staging_info.yml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StagingErrorFile {
    pub staging_error: ErrorEntry,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ErrorEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
}

/// A Procfile: YAML `name: command` lines (Heroku format); lines that are not are skipped.
pub fn parse_procfile(text: &str) -> BTreeMap<String, String> {
    if let Ok(map) = serde_yaml::from_str::<BTreeMap<String, serde_yaml::Value>>(text) {
        let out: BTreeMap<String, String> = map
            .into_iter()
            .filter_map(|(k, v)| scalar(&v).map(|v| (k, v)))
            .collect();
        if !out.is_empty() {
            return out;
        }
    }
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let k = k.trim();
            let ok = !k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            ok.then(|| (k.to_string(), v.trim().to_string()))
        })
        .collect()
}

fn scalar(v: &serde_yaml::Value) -> Option<String> {
    match v {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `default_process_types` of a release step's YAML output (empty if it has none).
pub fn release_process_types(release_yaml: &str) -> Result<BTreeMap<String, String>, String> {
    if release_yaml.trim().is_empty() {
        return Ok(BTreeMap::new());
    }
    let v: serde_yaml::Value = serde_yaml::from_str(release_yaml)
        .map_err(|e| format!("the release step's output is not YAML: {e}"))?;
    Ok(match v.get("default_process_types") {
        Some(serde_yaml::Value::Mapping(m)) => m
            .iter()
            .filter_map(|(k, v)| Some((scalar(k)?, scalar(v)?)))
            .collect(),
        _ => BTreeMap::new(),
    })
}

/// Put the pieces together: Procfile entries win over the release's process types for the
/// effective procfile; the start command is `meta.command`, else the procfile's `web`.
pub fn staging_info(
    buildpack_path: &str,
    detected_buildpack: &str,
    release_yaml: &str,
    procfile: Option<&str>,
    meta_command: Option<&str>,
) -> Result<StagingInfo, String> {
    let release = release_process_types(release_yaml)?;
    let procfile = procfile.map(parse_procfile).filter(|p| !p.is_empty());
    let effective_procfile = procfile.unwrap_or(release);
    let start_command = meta_command
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .or_else(|| {
            effective_procfile
                .get("web")
                .filter(|c| !c.trim().is_empty())
                .cloned()
        });
    Ok(StagingInfo {
        buildpack_path: buildpack_path.to_string(),
        detected_buildpack: detected_buildpack.to_string(),
        start_command,
        effective_procfile,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELEASE: &str =
        "---\nconfig_vars:\n  A: b\ndefault_process_types:\n  web: ./run -p $PORT\n  worker: ./w\n";

    #[test]
    fn release_types_then_procfile_then_meta_command() {
        let i = staging_info("/tmp/buildpacks/000", "Static", RELEASE, None, None).unwrap();
        assert_eq!(i.start_command.as_deref(), Some("./run -p $PORT"));
        assert_eq!(i.effective_procfile.len(), 2);

        let i = staging_info(
            "/b",
            "x",
            RELEASE,
            Some("web: bundle exec rackup -p $PORT\n"),
            None,
        )
        .unwrap();
        assert_eq!(
            i.start_command.as_deref(),
            Some("bundle exec rackup -p $PORT")
        );
        assert_eq!(
            i.effective_procfile,
            [("web".to_string(), "bundle exec rackup -p $PORT".to_string())].into()
        );

        let i = staging_info("/b", "x", RELEASE, Some("web: a"), Some(" ./mine ")).unwrap();
        assert_eq!(i.start_command.as_deref(), Some("./mine"));

        let i = staging_info("/b", "x", "", None, Some("  ")).unwrap();
        assert_eq!(i.start_command, None);
        assert!(staging_info("/b", "x", "a: [", None, None).is_err());
    }

    #[test]
    fn procfiles_that_are_not_quite_yaml() {
        let p = parse_procfile("web: node server.js --opt=a:b\n# comment\nworker: ./w\n");
        assert_eq!(p["web"], "node server.js --opt=a:b");
        assert_eq!(p["worker"], "./w");
        let p = parse_procfile("web: echo \"a: b\" && x: y\n");
        assert_eq!(p["web"], "echo \"a: b\" && x: y");
    }

    #[test]
    fn the_info_round_trips_through_the_instance_side() {
        let i = staging_info("/b", "Static", RELEASE, None, None).unwrap();
        let y = serde_yaml::to_string(&i).unwrap();
        assert_eq!(
            crate::instance::script::staging_info_start_command(&y).as_deref(),
            Some("./run -p $PORT")
        );
        let e: StagingErrorFile = serde_yaml::from_str(
            "staging_error:\n  type: NoAppDetectedError\n  message: \"An application could not be detected by any available buildpack\"\n",
        )
        .unwrap();
        assert_eq!(e.staging_error.kind, "NoAppDetectedError");
    }
}
