//! Redis as `REDIS_URL` names it: one server, or a Redis Cluster.
//!
//! `REDIS_URL` is one URL, or several separated by commas (seed nodes of a cluster). Whether it is
//! a cluster is asked of Redis at each connection (`INFO cluster`), not configured: an operator who
//! points `REDIS_URL` at any one node of a cluster gets the cluster, with commands routed to the
//! node that owns each key's slot (before, every key of another node's slot was refused). The
//! nodes a cluster lists are kept as seeds for the next connection, so losing the node named in
//! `REDIS_URL` (a master that failed over) does not lose the cluster.
//!
//! A cluster's connection reaches every node: commands by their key's slot, classic pub/sub through
//! any node (Redis forwards publications to every node), sharded pub/sub (`SSUBSCRIBE`/`SPUBLISH`)
//! to the node of the channel's slot. [`Conn::check`] asks every master that serves slots: one
//! that does not answer makes the link down until its replica takes over and a new connection
//! (with the cluster's new map) finds every slot served again.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_shared::sync::Locked;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo, Slot};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, ProtocolVersion, PushInfo,
    RedisFuture, RedisResult, Value,
};

/// Where Redis is, as `REDIS_URL` says and as the cluster (if it is one) last told.
pub(crate) struct Target {
    seeds: Vec<ConnectionInfo>,
    /// The nodes a cluster listed at the last connection, tried after the seeds.
    learned: Mutex<Vec<ConnectionInfo>>,
}

/// What a connection is for: its timeouts, and where its pushes (publications, disconnection
/// notices) go, if it subscribes.
#[derive(Clone)]
pub(crate) struct Settings {
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub pushes: Option<Pushes>,
}

pub(crate) type Pushes = Arc<dyn Fn(PushInfo) + Send + Sync>;

/// A connection to one server or to a whole cluster; cheap to clone (both multiplex).
#[derive(Clone)]
pub(crate) enum Conn {
    Node(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Target {
    /// Reads `REDIS_URL`: one URL or several, comma-separated (the configuration checked them).
    pub(crate) fn parse(urls: &str) -> RedisResult<Target> {
        let seeds = urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|url| {
                let info = url.into_connection_info()?;
                let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
                Ok(info.set_redis_settings(settings))
            })
            .collect::<RedisResult<Vec<_>>>()?;
        if seeds.is_empty() {
            return Err((redis::ErrorKind::InvalidClientConfig, "no Redis URL").into());
        }
        Ok(Target { seeds, learned: Mutex::default() })
    }

    /// The first seed's address, for logs (no password).
    pub(crate) fn address(&self) -> String {
        self.seeds[0].addr().to_string()
    }

    /// Connects to the first seed (then learned node) that answers; to the whole cluster when it is
    /// one.
    pub(crate) async fn connect(&self, settings: &Settings) -> RedisResult<Conn> {
        let candidates: Vec<ConnectionInfo> =
            self.seeds.iter().cloned().chain(self.learned.locked().iter().cloned()).collect();
        let mut failures = Vec::new();
        for info in candidates {
            let address = info.addr().to_string();
            match self.connect_via(info, settings).await {
                Ok(conn) => return Ok(conn),
                Err(e) => failures.push((e, address)),
            }
        }
        // The first node's error, with every node's when there were several.
        let mut failures = failures.into_iter();
        let Some((first, at)) = failures.next() else {
            return Err((redis::ErrorKind::Io, "no Redis to connect to").into());
        };
        let others: Vec<String> = failures.map(|(e, at)| format!("{at}: {e}")).collect();
        if others.is_empty() {
            return Err(first);
        }
        Err((redis::ErrorKind::Io, "no node of the cluster answered", format!("{at}: {first}; {}", others.join("; ")))
            .into())
    }

    async fn connect_via(&self, info: ConnectionInfo, settings: &Settings) -> RedisResult<Conn> {
        let client = Client::open(info.clone())?;
        let plain = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(settings.connect_timeout))
            .set_response_timeout(Some(settings.response_timeout));
        let mut probe = client.get_multiplexed_async_connection_with_config(&plain).await?;
        // A user whose ACL refuses INFO talks to one server, as before clusters were supported.
        let about: String = match redis::cmd("INFO").arg("cluster").query_async(&mut probe).await {
            Ok(about) => about,
            Err(e) if e.code().is_some() => String::new(),
            Err(e) => return Err(e),
        };
        if !about.lines().any(|line| line.trim() == "cluster_enabled:1") {
            // The probe has no push sender: subscribing needs a connection of its own.
            return match &settings.pushes {
                None => Ok(Conn::Node(probe)),
                Some(pushes) => {
                    let pushes = pushes.clone();
                    let config = plain.set_push_sender(move |push: PushInfo| {
                        pushes(push);
                        Ok::<(), std::convert::Infallible>(())
                    });
                    Ok(Conn::Node(client.get_multiplexed_async_connection_with_config(&config).await?))
                }
            };
        }
        let nodes: String = redis::cmd("CLUSTER").arg("NODES").query_async(&mut probe).await?;
        let learned = learn_nodes(&nodes, &info);
        let mut builder = ClusterClientBuilder::new(std::iter::once(info).chain(learned.iter().cloned()))
            .use_protocol(ProtocolVersion::RESP3)
            .connection_timeout(settings.connect_timeout)
            .response_timeout(settings.response_timeout)
            // A command to a master that is down fails fast: the link is then down (see
            // `redis_link`), and what was not kept is kept for later there.
            .retries(1);
        if let Some(pushes) = &settings.pushes {
            let pushes = pushes.clone();
            builder = builder.push_sender(move |push: PushInfo| {
                pushes(push);
                Ok::<(), std::convert::Infallible>(())
            });
        }
        let conn = builder.build()?.get_async_connection().await?;
        *self.learned.locked() = learned;
        Ok(Conn::Cluster(conn))
    }
}

/// The masters that serve slots in a `CLUSTER NODES` answer: `(host:port, flags)`.
fn serving_masters(nodes: &str) -> Vec<(&str, &str)> {
    nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // id address flags master ping pong epoch link slot...
            let (address, flags) = (fields.get(1)?, fields.get(2)?);
            let serving = flags.split(',').any(|f| f == "master") && fields.len() > 8;
            serving.then_some((address.split('@').next()?, *flags))
        })
        .collect()
}

/// The addresses in a `CLUSTER NODES` answer (`id host:port@bus flags ...` a line), with the
/// seed's settings (password, RESP3).
fn learn_nodes(nodes: &str, like: &ConnectionInfo) -> Vec<ConnectionInfo> {
    nodes
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .filter_map(|address| address.split('@').next())
        .filter_map(|address| {
            let (host, port) = address.rsplit_once(':')?;
            let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() {
                return None;
            }
            let addr = redis::ConnectionAddr::Tcp(host.to_owned(), port);
            Some(like.clone().set_addr(addr))
        })
        .collect()
}

impl Conn {
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }

    /// Whether Redis answers: a server, or every master of a cluster that serves slots (the
    /// library's own `PING` to every master skips a master it has no connection to). `Err` says why
    /// not.
    pub(crate) async fn check(&mut self) -> Result<(), String> {
        let conn = match self {
            Conn::Node(conn) => return redis::cmd("PING").query_async::<()>(conn).await.map_err(|e| e.to_string()),
            Conn::Cluster(conn) => conn,
        };
        let nodes: String = redis::cmd("CLUSTER").arg("NODES").query_async(conn).await.map_err(|e| e.to_string())?;
        for (address, flags) in serving_masters(&nodes) {
            if flags.split(',').any(|flag| flag == "fail" || flag == "fail?") {
                return Err(format!("the Redis Cluster's master {address} is down ({flags})"));
            }
            let Some((host, port)) = address.rsplit_once(':').and_then(|(h, p)| Some((h, p.parse().ok()?))) else {
                continue;
            };
            let at = SingleNodeRoutingInfo::ByAddress { host: host.to_owned(), port };
            if let Err(e) = conn.route_command(redis::cmd("PING"), RoutingInfo::SingleNode(at)).await {
                return Err(format!("the Redis Cluster's master {address} does not answer: {e}"));
            }
        }
        Ok(())
    }

    pub(crate) async fn subscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            Conn::Node(conn) => conn.subscribe(channels).await,
            Conn::Cluster(conn) => conn.subscribe(channels).await,
        }
    }

    pub(crate) async fn unsubscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            Conn::Node(conn) => conn.unsubscribe(channels).await,
            Conn::Cluster(conn) => conn.unsubscribe(channels).await,
        }
    }

    /// Sharded subscriptions (a cluster only): one command per slot, as Redis requires.
    pub(crate) async fn ssubscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        let Conn::Cluster(conn) = self else { return Ok(()) };
        for group in by_slot(channels) {
            conn.ssubscribe(group).await?;
        }
        Ok(())
    }

    pub(crate) async fn sunsubscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        let Conn::Cluster(conn) = self else { return Ok(()) };
        for group in by_slot(channels) {
            conn.sunsubscribe(group).await?;
        }
        Ok(())
    }
}

/// Channels (or keys) grouped by their slot, in their order within each group.
fn by_slot(names: &[String]) -> Vec<Vec<&String>> {
    let mut groups: Vec<(Slot, Vec<&String>)> = Vec::new();
    for name in names {
        let slot = Slot::for_key(name);
        match groups.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, group)) => group.push(name),
            None => groups.push((slot, vec![name])),
        }
    }
    groups.into_iter().map(|(_, group)| group).collect()
}

/// The slot a command's key is in; `None` for a command without a key (`PUBLISH`, which a cluster
/// forwards to every node, may go to any).
pub(crate) fn slot_of(cmd: &Cmd) -> Option<Slot> {
    let mut args = cmd.args_iter().filter_map(|arg| match arg {
        redis::Arg::Simple(bytes) => Some(bytes),
        _ => None,
    });
    let name = args.next()?.to_ascii_uppercase();
    let key = match name.as_slice() {
        b"PUBLISH" | b"PING" => return None,
        // EVAL script numkeys key...
        b"EVAL" | b"EVALSHA" => {
            let _script = args.next()?;
            let keys: usize = std::str::from_utf8(args.next()?).ok()?.parse().ok()?;
            if keys == 0 {
                return None;
            }
            args.next()?
        }
        _ => args.next()?,
    };
    Some(Slot::for_key(key))
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Node(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Node(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Node(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clusters_nodes_become_seeds_with_the_seeds_settings() {
        let seed = "redis://:pw@127.0.0.1:7000".into_connection_info().expect("url");
        let nodes = "07c3 127.0.0.1:7001@17001 master - 0 0 1 connected 0-5460\n\
                     9a1f 127.0.0.1:7002@17002 myself,master - 0 0 2 connected 5461-10922\n\
                     e0d2 :0@0 master,noaddr - 0 0 3 disconnected\n";
        let learned = learn_nodes(nodes, &seed);
        let addresses: Vec<String> = learned.iter().map(|i| i.addr().to_string()).collect();
        assert_eq!(addresses, ["127.0.0.1:7001", "127.0.0.1:7002"]);
        assert_eq!(learned[0].redis_settings().password(), Some("pw"));
        let serving = serving_masters(nodes);
        assert_eq!(serving, [("127.0.0.1:7001", "master"), ("127.0.0.1:7002", "myself,master")]);
    }

    #[test]
    fn commands_are_routed_by_their_key_and_scripts_by_their_first_key() {
        let key = |k: &str| Some(Slot::for_key(k));
        assert_eq!(slot_of(redis::cmd("XADD").arg("chat:room").arg("*")), key("chat:room"));
        assert_eq!(slot_of(redis::cmd("EVAL").arg("return 1").arg(1).arg("{a}:x").arg("v")), key("{a}:y"));
        assert_eq!(slot_of(redis::cmd("EVAL").arg("return 1").arg(0)), None);
        assert_eq!(slot_of(redis::cmd("PUBLISH").arg("chan").arg("v")), None);
        assert_eq!(slot_of(redis::cmd("SPUBLISH").arg("x{room}").arg("v")), key("y{room}"));
    }

    #[test]
    fn urls_may_list_several_seeds() {
        let target = Target::parse("redis://127.0.0.1:7000, redis://127.0.0.1:7001").expect("two seeds");
        assert_eq!(target.seeds.len(), 2);
        assert_eq!(target.address(), "127.0.0.1:7000");
        assert!(Target::parse(" , ").is_err());
    }
}
