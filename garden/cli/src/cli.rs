//! The command line: every command, flag and its help text with examples.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::parse;

const EXAMPLES: &str = "\
Examples:
  gardenctl ping
  gardenctl create --handle web --memory 256M --env PORT=8080 --property app=web
  gardenctl list app=web
  gardenctl shell web
  echo hello | gardenctl run web -- cat
  gardenctl stream-in web --to /srv ./site
  gardenctl stream-out web --from /var/log/ --to ./logs
  gardenctl destroy web

The server is --target, or $GARDEN_TARGET, or 127.0.0.1:7777.";

/// A command-line client for Garden servers (gardend, gdn).
#[derive(Debug, Parser)]
#[command(name = "gardenctl", version, after_help = EXAMPLES, max_term_width = 100)]
pub struct Cli {
    /// Server address: HOST:PORT, tcp://HOST:PORT, unix:///PATH or a socket path.
    #[arg(
        long,
        short = 'T',
        global = true,
        env = "GARDEN_TARGET",
        default_value = "127.0.0.1:7777",
        value_parser = parse::target
    )]
    pub target: String,

    /// Print JSON instead of tables, for scripts.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check that the server answers.
    #[command(
        after_help = "Examples:\n  gardenctl ping\n  gardenctl --target unix:///run/gardend.sock ping"
    )]
    Ping,

    /// Show the server's memory, disk and container capacity.
    #[command(after_help = "Example:\n  gardenctl capacity --json")]
    Capacity,

    /// Create a container and print its handle.
    #[command(after_help = "\
Examples:
  gardenctl create
  gardenctl create --handle web --image docker:///busybox --memory 64M --grace-time 5m
  gardenctl create --rootfs /var/lib/rootfs/alpine --env LANG=C.UTF-8 --property team=infra \\
      --bind-mount /srv/data:/data:rw --cpu-shares 512 --pids 100 --network 10.80.0.0/24")]
    Create(CreateArgs),

    /// List container handles, optionally only those whose properties match.
    #[command(
        visible_alias = "ls",
        after_help = "Examples:\n  gardenctl list\n  gardenctl list app=web team=infra\n  gardenctl list -q | xargs gardenctl destroy"
    )]
    List(ListArgs),

    /// Show a container's state, addresses, processes, ports and properties.
    #[command(after_help = "Examples:\n  gardenctl info web\n  gardenctl info web --json")]
    Info {
        /// The container's handle.
        handle: String,
        /// Also show the server's internal properties (garden.*, kawasaki.*).
        #[arg(long, short = 'a')]
        all: bool,
    },

    /// Destroy containers, killing all their processes.
    #[command(
        visible_alias = "rm",
        after_help = "Example:\n  gardenctl destroy web worker-1 worker-2"
    )]
    Destroy {
        #[arg(required = true, value_name = "HANDLE")]
        handles: Vec<String>,
    },

    /// Stop every process in a container (SIGTERM, then SIGKILL after about 10 s).
    #[command(after_help = "Examples:\n  gardenctl stop web\n  gardenctl stop --kill web")]
    Stop {
        /// The container's handle.
        handle: String,
        /// Send SIGKILL at once.
        #[arg(long, short = 'k')]
        kill: bool,
    },

    /// Run a process in a container, forwarding stdin and output; exits with its exit code.
    #[command(after_help = "\
Stdin is forwarded when it is not a terminal, or with -t.

Examples:
  gardenctl run web -- ls -la /
  echo hello | gardenctl run web -- cat
  gardenctl run web --user vcap --dir /app --env DEBUG=1 -- ./start.sh
  gardenctl run -t web -- /bin/bash
  gardenctl run web --detach -- sleep 600      # prints the process id
  gardenctl run web --attach <PROCESS-ID>")]
    Run(RunArgs),

    /// Open an interactive shell in a container (run -t HANDLE -- /bin/sh -l).
    #[command(
        after_help = "Examples:\n  gardenctl shell web\n  gardenctl shell web --user vcap --shell /bin/bash"
    )]
    Shell(ShellArgs),

    /// Copy files into a container: a local file or directory, or a tar archive on stdin.
    #[command(after_help = "\
A directory is copied as itself (DIR -> DEST/DIR); with a trailing slash (DIR/) its contents go
straight into DEST. DEST is created if missing; a relative DEST is relative to the user's home.

Examples:
  gardenctl stream-in web --to /srv ./site           # -> /srv/site/...
  gardenctl stream-in web --to /srv/site ./site/     # -> /srv/site/...
  gardenctl stream-in web --to /etc/app ./app.conf
  tar -C build -c . | gardenctl stream-in web --to /app")]
    StreamIn(StreamInArgs),

    /// Copy files out of a container, as a tar archive on stdout or extracted into a directory.
    #[command(after_help = "\
SRC without a trailing slash yields the path itself (dir/...); with one, the directory's contents.

Examples:
  gardenctl stream-out web --from /var/log --to ./out      # -> ./out/log/...
  gardenctl stream-out web --from /var/log/ --to ./logs    # -> ./logs/...
  gardenctl stream-out web --from /etc/hosts > hosts.tar")]
    StreamOut(StreamOutArgs),

    /// Forward a host port to a port in the container.
    #[command(after_help = "\
A host port of 0 takes the next free port from the server's pool; a container port of 0 means the
same as the host port.

Examples:
  gardenctl net-in web --container-port 8080
  gardenctl net-in web --host-port 61005 --container-port 80")]
    NetIn(NetInArgs),

    /// Allow outbound traffic from a container.
    #[command(after_help = "\
Examples:
  gardenctl net-out web --protocol tcp --network 10.0.0.0/8 --port 443 --port 8000-8100
  gardenctl net-out web --protocol icmp --network 8.8.8.8 --icmp-type 8 --icmp-code 0
  gardenctl net-out web --network 192.168.1.10-192.168.1.20 --log")]
    NetOut(NetOutArgs),

    /// Read and change a container's properties.
    #[command(subcommand, visible_alias = "props")]
    Properties(PropertiesCommand),

    /// Show a container's memory, CPU, disk, network and process usage.
    #[command(after_help = "Example:\n  gardenctl metrics web")]
    Metrics {
        /// The container's handle.
        handle: String,
    },

    /// Show the limits in effect for a container (memory, CPU, disk, bandwidth).
    #[command(after_help = "Example:\n  gardenctl limits web --json")]
    Limits {
        /// The container's handle.
        handle: String,
    },

    /// Show info for several containers at once (default: every container).
    #[command(
        after_help = "Examples:\n  gardenctl bulk-info\n  gardenctl bulk-info web worker --json"
    )]
    BulkInfo {
        #[arg(value_name = "HANDLE")]
        handles: Vec<String>,
    },

    /// Show metrics for several containers at once (default: every container).
    #[command(
        after_help = "Examples:\n  gardenctl bulk-metrics\n  gardenctl bulk-metrics web worker"
    )]
    BulkMetrics {
        #[arg(value_name = "HANDLE")]
        handles: Vec<String>,
    },

    /// Change how long an idle container lives before the server destroys it.
    #[command(after_help = "Example:\n  gardenctl grace-time web 1h")]
    GraceTime {
        /// The container's handle.
        handle: String,
        /// e.g. 30s, 5m, 1h30m.
        #[arg(value_parser = parse::duration)]
        duration: Duration,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Name of the container; the server picks one when omitted.
    #[arg(long, short = 'n')]
    pub handle: Option<String>,
    /// Image URI: /path, raw:///path, docker:///repo#tag, oci:///layout.
    #[arg(long, short = 'i', conflicts_with = "rootfs")]
    pub image: Option<String>,
    /// Root filesystem path (the legacy `rootfs` field).
    #[arg(long, short = 'r')]
    pub rootfs: Option<String>,
    /// Registry user name for a private image.
    #[arg(long, requires = "image")]
    pub image_username: Option<String>,
    /// Registry password for a private image.
    #[arg(
        long,
        requires = "image",
        env = "GARDEN_IMAGE_PASSWORD",
        hide_env_values = true
    )]
    pub image_password: Option<String>,
    /// Environment for every process, NAME=VALUE (NAME alone copies ours); repeatable.
    #[arg(long, short = 'e', value_name = "NAME=VALUE", value_parser = parse::env)]
    pub env: Vec<String>,
    /// A property, KEY=VALUE; repeatable.
    #[arg(long, short = 'p', value_name = "KEY=VALUE", value_parser = parse::key_value)]
    pub property: Vec<(String, String)>,
    /// Bind mount SRC:DST[:ro|rw] from the host (read-only by default); repeatable.
    #[arg(long, short = 'm', value_name = "SRC:DST[:MODE]", value_parser = parse::bind_mount)]
    pub bind_mount: Vec<garden_api::BindMount>,
    /// Memory limit, e.g. 64M or 1G.
    #[arg(long, value_parser = parse::size)]
    pub memory: Option<u64>,
    /// CPU weight in cgroup shares (e.g. 512).
    #[arg(long)]
    pub cpu_shares: Option<u64>,
    /// Maximum number of processes and threads.
    #[arg(long)]
    pub pids: Option<u64>,
    /// Disk limit, e.g. 1G.
    #[arg(long, value_parser = parse::size)]
    pub disk: Option<u64>,
    /// What the disk limit counts: the image plus the container's writes, or only the writes.
    #[arg(long, value_enum, default_value_t = DiskScope::Total, requires = "disk")]
    pub disk_scope: DiskScope,
    /// Destroy the container after it has been idle this long, e.g. 30s, 5m, 1h.
    #[arg(long, value_parser = parse::duration)]
    pub grace_time: Option<Duration>,
    /// Static subnet (10.80.0.0/24) or address (10.80.0.5/30) for the container.
    #[arg(long)]
    pub network: Option<String>,
    /// No user namespace: container root is host root.
    #[arg(long)]
    pub privileged: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiskScope {
    Total,
    Exclusive,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Property filters KEY=VALUE; a container must match all of them.
    #[arg(value_name = "KEY=VALUE", value_parser = parse::key_value)]
    pub filters: Vec<(String, String)>,
    /// Print only the handles, one per line.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Include containers still being created or destroyed.
    #[arg(long, short = 'a')]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The container's handle.
    pub handle: String,
    /// Give the process a terminal: raw mode, window size and resizes are forwarded.
    #[arg(long, short = 't')]
    pub tty: bool,
    /// User to run as: NAME, UID:GID or NAME:GROUP (default root).
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    /// Working directory (default: the user's home).
    #[arg(long, short = 'd')]
    pub dir: Option<String>,
    /// Environment NAME=VALUE (NAME alone copies ours); repeatable.
    #[arg(long, short = 'e', value_name = "NAME=VALUE", value_parser = parse::env)]
    pub env: Vec<String>,
    /// Process id to use instead of a generated one.
    #[arg(long)]
    pub id: Option<String>,
    /// Start the process, print its id and leave it running.
    #[arg(long, conflicts_with = "tty")]
    pub detach: bool,
    /// Re-attach to a running (or finished) process instead of starting one.
    #[arg(long, value_name = "PROCESS-ID", conflicts_with_all = ["command", "user", "dir", "env", "id", "detach"])]
    pub attach: Option<String>,
    /// The program and its arguments (after --).
    #[arg(
        trailing_var_arg = true,
        value_name = "COMMAND",
        required_unless_present = "attach"
    )]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ShellArgs {
    /// The container's handle.
    pub handle: String,
    /// User to log in as (default root).
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    /// Working directory (default: the user's home).
    #[arg(long, short = 'd')]
    pub dir: Option<String>,
    /// Extra environment NAME=VALUE; repeatable.
    #[arg(long, short = 'e', value_name = "NAME=VALUE", value_parser = parse::env)]
    pub env: Vec<String>,
    /// The shell to start.
    #[arg(long, default_value = "/bin/sh")]
    pub shell: String,
}

#[derive(Debug, Args)]
pub struct StreamInArgs {
    /// The container's handle.
    pub handle: String,
    /// Directory in the container to extract into.
    #[arg(long)]
    pub to: String,
    /// User who will own the files (default root).
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    /// Local file or directory, or - for a tar archive on stdin.
    #[arg(default_value = "-", value_name = "PATH|-")]
    pub source: String,
}

#[derive(Debug, Args)]
pub struct StreamOutArgs {
    /// The container's handle.
    pub handle: String,
    /// Path in the container.
    #[arg(long)]
    pub from: String,
    /// User to read as (default root).
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    /// Local directory to extract into, or - for the tar archive on stdout.
    #[arg(long, default_value = "-", value_name = "DIR|-")]
    pub to: String,
}

#[derive(Debug, Args)]
pub struct NetInArgs {
    /// The container's handle.
    pub handle: String,
    /// Host port (0 = next free port of the pool).
    #[arg(long, default_value_t = 0)]
    pub host_port: u32,
    /// Container port (0 = same as the host port).
    #[arg(long, default_value_t = 0)]
    pub container_port: u32,
}

#[derive(Debug, Args)]
pub struct NetOutArgs {
    /// The container's handle.
    pub handle: String,
    /// all, tcp, udp, icmp or icmpv6.
    #[arg(long, default_value = "all", value_parser = parse::protocol)]
    pub protocol: garden_api::Protocol,
    /// Destination: an address, a CIDR or START-END; repeatable (default: anywhere).
    #[arg(long, value_parser = parse::ip_range)]
    pub network: Vec<garden_api::IpRange>,
    /// Destination port or range START-END (tcp/udp only); repeatable (default: any).
    #[arg(long, value_parser = parse::port_range)]
    pub port: Vec<garden_api::PortRange>,
    /// ICMP type (icmp/icmpv6 only).
    #[arg(long)]
    pub icmp_type: Option<u8>,
    /// ICMP code (needs --icmp-type; default: any code).
    #[arg(long, requires = "icmp_type")]
    pub icmp_code: Option<u8>,
    /// Log new connections matching this rule.
    #[arg(long)]
    pub log: bool,
}

#[derive(Debug, Subcommand)]
pub enum PropertiesCommand {
    /// Show all properties of a container.
    #[command(
        visible_alias = "ls",
        after_help = "Example:\n  gardenctl properties list web"
    )]
    List {
        /// The container's handle.
        handle: String,
    },
    /// Print one property's value.
    #[command(after_help = "Example:\n  gardenctl properties get web app")]
    Get {
        /// The container's handle.
        handle: String,
        key: String,
    },
    /// Set (create or overwrite) a property.
    #[command(after_help = "Example:\n  gardenctl properties set web app frontend")]
    Set {
        /// The container's handle.
        handle: String,
        key: String,
        value: String,
    },
    /// Remove properties.
    #[command(
        visible_alias = "remove",
        after_help = "Example:\n  gardenctl properties rm web app team"
    )]
    Rm {
        /// The container's handle.
        handle: String,
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("gardenctl").chain(args.iter().copied()))
    }

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_takes_the_command_after_dashes_or_the_handle() {
        let Command::Run(r) = parse(&["run", "-t", "h", "--", "sh", "-c", "exit 7"])
            .unwrap()
            .command
        else {
            panic!("not run")
        };
        assert!(r.tty);
        assert_eq!(r.handle, "h");
        assert_eq!(r.command, ["sh", "-c", "exit 7"]);
        let Command::Run(r) = parse(&[
            "run", "h", "--user", "vcap", "-e", "A=1", "ls", "-la", "--user",
        ])
        .unwrap()
        .command
        else {
            panic!("not run")
        };
        assert_eq!(r.user.as_deref(), Some("vcap"));
        assert_eq!(r.env, ["A=1"]);
        assert_eq!(r.command, ["ls", "-la", "--user"]);
    }

    #[test]
    fn run_needs_a_command_or_attach() {
        assert!(parse(&["run", "h"]).is_err());
        let Command::Run(r) = parse(&["run", "h", "--attach", "p1"]).unwrap().command else {
            panic!("not run")
        };
        assert_eq!(r.attach.as_deref(), Some("p1"));
        assert!(parse(&["run", "h", "--attach", "p1", "--", "ls"]).is_err());
    }

    #[test]
    fn create_flags() {
        let Command::Create(c) = parse(&[
            "create",
            "--memory",
            "64M",
            "--grace-time",
            "5m",
            "--bind-mount",
            "/a:/b:rw",
            "-p",
            "app=web",
            "--env",
            "X=1",
            "--disk",
            "1G",
            "--disk-scope",
            "exclusive",
        ])
        .unwrap()
        .command
        else {
            panic!("not create")
        };
        assert_eq!(c.memory, Some(64 << 20));
        assert_eq!(c.grace_time, Some(Duration::from_secs(300)));
        assert_eq!(c.bind_mount[0].mode, garden_api::BIND_MOUNT_MODE_RW);
        assert_eq!(c.property, [("app".to_string(), "web".to_string())]);
        assert_eq!(c.disk_scope, DiskScope::Exclusive);
        assert!(parse(&["create", "--memory", "lots"])
            .unwrap_err()
            .to_string()
            .contains("invalid size 'lots'"));
        assert!(parse(&["create", "--image", "a", "--rootfs", "b"]).is_err());
    }

    #[test]
    fn global_flags_anywhere() {
        let cli = parse(&[
            "list",
            "app=web",
            "--json",
            "--target",
            "unix:///run/g.sock",
        ])
        .unwrap();
        assert!(cli.json);
        assert_eq!(cli.target, "unix:///run/g.sock");
        let Command::List(l) = cli.command else {
            panic!("not list")
        };
        assert_eq!(l.filters, [("app".to_string(), "web".to_string())]);
        assert!(parse(&["list", "novalue"]).is_err());
    }

    #[test]
    fn destroy_needs_handles() {
        assert!(parse(&["destroy"]).is_err());
        let Command::Destroy { handles } = parse(&["rm", "a", "b"]).unwrap().command else {
            panic!("not destroy")
        };
        assert_eq!(handles, ["a", "b"]);
    }
}
