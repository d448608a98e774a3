//! Where the PostgreSQL and MySQL test variants get their server: the configured URL
//! (`JOBDB_TEST_POSTGRES_URL` / `JOBDB_TEST_MYSQL_URL`, or a matching `DATABASE_URL`), else a
//! container when a Docker engine answers, else none (the variants then say SKIPPED, or fail
//! under `JOBDB_REQUIRE_*=1`). The decision is a pure function ([`decide`]), tested below.
//! The container is started through the `testcontainers` crate's blocking runner (the tests
//! need no async runtime of their own), named and marked for reuse, so later runs find it
//! running. This project's CI machine has no Docker engine, so that path is not exercised
//! there.

/// One kind of test server.
pub struct Server {
    /// The variable naming a configured server.
    pub env: &'static str,
    /// URL schemes that `DATABASE_URL` may use for this kind.
    pub schemes: &'static [&'static str],
    /// The container's name, image and tag, port and environment.
    pub container: &'static str,
    pub image: &'static str,
    pub tag: &'static str,
    pub port: u16,
    pub docker_env: &'static [(&'static str, &'static str)],
    /// The URL for a container listening on local `port`.
    pub url: fn(u16) -> String,
}

pub const POSTGRES: Server = Server {
    env: "JOBDB_TEST_POSTGRES_URL",
    schemes: &["postgres://", "postgresql://"],
    container: "jobdb-test-postgres",
    image: "postgres",
    tag: "17-alpine",
    port: 5432,
    docker_env: &[("POSTGRES_HOST_AUTH_METHOD", "trust")],
    url: |port| format!("postgres://postgres@127.0.0.1:{port}/postgres"),
};

#[cfg_attr(not(feature = "mysql"), allow(dead_code))]
pub const MARIADB: Server = Server {
    env: "JOBDB_TEST_MYSQL_URL",
    schemes: &["mysql://", "mariadb://"],
    container: "jobdb-test-mariadb",
    image: "mariadb",
    tag: "11",
    port: 3306,
    docker_env: &[
        ("MARIADB_ALLOW_EMPTY_ROOT_PASSWORD", "1"),
        ("MARIADB_DATABASE", "test"),
    ],
    url: |port| format!("mysql://root@127.0.0.1:{port}/test"),
};

/// Where a test server comes from.
#[derive(Debug, PartialEq, Eq)]
pub enum Source {
    /// A URL the environment names.
    Configured(String),
    /// Start (or reuse) the container.
    Container,
    /// None: skip, or fail under `JOBDB_REQUIRE_*`.
    Missing,
}

/// The decision: the server's own variable first, then a `DATABASE_URL` of its scheme, then a
/// container if a Docker engine answers.
pub fn decide(
    server: &Server,
    var: impl Fn(&str) -> Option<String>,
    docker_answers: impl FnOnce() -> bool,
) -> Source {
    let url = var(server.env)
        .filter(|u| !u.trim().is_empty())
        .or_else(|| {
            var("DATABASE_URL").filter(|u| {
                let lower = u.to_ascii_lowercase();
                server.schemes.iter().any(|s| lower.starts_with(s))
            })
        });
    match url {
        Some(url) => Source::Configured(url),
        None if docker_answers() => Source::Container,
        None => Source::Missing,
    }
}

/// The URL of `server`'s test server, if any (decided once per process).
pub fn server_url(server: &'static Server) -> Option<String> {
    match decide(server, |k| std::env::var(k).ok(), docker_answers) {
        Source::Configured(url) => Some(url),
        Source::Container => container_url(server),
        Source::Missing => None,
    }
}

/// Whether a Docker engine answers (`docker info`).
fn docker_answers() -> bool {
    std::process::Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// One container per kind, started through testcontainers on first use (named, and marked
/// for reuse so that later runs find it running: `docker rm -f <name>` removes it); waits up
/// to 60 s for it to accept connections. `None`, after saying why, when it cannot start.
fn container_url(server: &'static Server) -> Option<String> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use testcontainers::core::IntoContainerPort;
    use testcontainers::runners::SyncRunner;
    use testcontainers::{GenericImage, ImageExt, ReuseDirective};
    static URLS: Mutex<Option<HashMap<&'static str, Option<String>>>> = Mutex::new(None);
    let mut urls = URLS.lock().unwrap_or_else(|e| e.into_inner());
    let urls = urls.get_or_insert_with(HashMap::new);
    urls.entry(server.container)
        .or_insert_with(|| {
            let mut request = GenericImage::new(server.image, server.tag)
                .with_exposed_port(server.port.tcp())
                .with_container_name(server.container)
                .with_reuse(ReuseDirective::Always);
            for (name, value) in server.docker_env {
                request = request.with_env_var(*name, *value);
            }
            let container = request
                .start()
                .map_err(|e| eprintln!("cannot start the {} container: {e}", server.container))
                .ok()?;
            let port = container
                .get_host_port_ipv4(server.port)
                .map_err(|e| eprintln!("the {} container's port: {e}", server.container))
                .ok()?;
            // Dropping the handle leaves a container marked for reuse running.
            drop(container);
            let url = (server.url)(port);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while !accepts(&url) {
                if std::time::Instant::now() > deadline {
                    eprintln!(
                        "the {} container did not accept connections within 60 s",
                        server.container
                    );
                    return None;
                }
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            Some(url)
        })
        .clone()
}

fn accepts(url: &str) -> bool {
    use diesel::Connection;
    #[cfg(feature = "mysql")]
    if url.starts_with("mysql://") {
        return diesel::MysqlConnection::establish(url).is_ok();
    }
    diesel::PgConnection::establish(url).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn the_configured_url_wins_over_docker() {
        let d = decide(
            &MARIADB,
            env(&[("JOBDB_TEST_MYSQL_URL", "mysql://u@h/db")]),
            || panic!("docker is not asked when a URL is configured"),
        );
        assert_eq!(d, Source::Configured("mysql://u@h/db".into()));
    }

    #[test]
    fn database_url_counts_only_for_its_own_scheme() {
        let pg = env(&[("DATABASE_URL", "postgres://p@h/db")]);
        assert_eq!(
            decide(&POSTGRES, &pg, || false),
            Source::Configured("postgres://p@h/db".into())
        );
        assert_eq!(decide(&MARIADB, &pg, || false), Source::Missing);
        let my = env(&[("DATABASE_URL", "MariaDB://r@h/t")]);
        assert_eq!(
            decide(&MARIADB, &my, || false),
            Source::Configured("MariaDB://r@h/t".into())
        );
    }

    #[test]
    fn without_a_url_a_docker_engine_means_a_container_else_nothing() {
        let none = env(&[("JOBDB_TEST_MYSQL_URL", " ")]);
        assert_eq!(decide(&MARIADB, &none, || true), Source::Container);
        assert_eq!(decide(&MARIADB, &none, || false), Source::Missing);
    }

    #[test]
    fn the_container_url_is_built_from_the_mapped_port() {
        assert_eq!((MARIADB.url)(49153), "mysql://root@127.0.0.1:49153/test");
        assert_eq!(
            (POSTGRES.url)(5),
            "postgres://postgres@127.0.0.1:5/postgres"
        );
    }
}
