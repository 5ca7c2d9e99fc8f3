//! `mysql:5.7` for the ConfigMap, Secret and hostPath tutorial, built here (there is no Docker
//! Hub to pull it from) from Debian's MariaDB, which `scripts/deps.sh` unpacks into
//! [`MARIADB_ROOT`]. Its entrypoint does what the official image's does: a first start
//! initialises `/var/lib/mysql` and sets root's password from `MYSQL_ROOT_PASSWORD` (refusing
//! to start without one), with `MYSQL_DATABASE`, `MYSQL_USER` and `MYSQL_PASSWORD` as well;
//! `/etc/mysql/conf.d/*.cnf` is read, so a ConfigMap mounted there configures the server.

use std::path::Path;

use anyhow::{bail, Context, Result};
use oci::build::{BuiltImage, ImageBuilder, TarBuilder};
use oci::spec::Compression;

/// Debian's mariadb-server-core and mariadb-client-core, unpacked.
pub const MARIADB_ROOT: &str = "/var/cache/knode/mariadb";

/// The tutorial's image name.
pub const IMAGE: &str = "mysql:5.7";

/// The tutorial's hostPath, on the node, and the directory above it.
pub const HOST_DATA: &str = "/home/mysql/data";
pub const HOST_HOME: &str = "/home/mysql";

/// The official image's entrypoint, for MariaDB, in busybox sh. As there, the password is
/// taken through `$(...)`, which drops trailing newlines: the tutorial's Secret holds
/// "123456\n" and root's password is 123456.
const ENTRYPOINT: &str = r#"#!/bin/sh
# mysql:5.7's entrypoint, for MariaDB: a first start initialises the data directory and sets
# root's password from MYSQL_ROOT_PASSWORD (MYSQL_DATABASE, MYSQL_USER, MYSQL_PASSWORD too).
set -e
if [ "$1" = mysqld ]; then shift; fi
datadir=/var/lib/mysql
mkdir -p "$datadir" /run/mysqld
chown mysql:mysql "$datadir" /run/mysqld
if [ ! -d "$datadir/mysql" ]; then
  if [ -z "$MYSQL_ROOT_PASSWORD" ] && [ -z "$MYSQL_ALLOW_EMPTY_PASSWORD" ]; then
    echo >&2 'error: database is uninitialized and password option is not specified'
    echo >&2 '  You need to specify one of MYSQL_ROOT_PASSWORD or MYSQL_ALLOW_EMPTY_PASSWORD'
    exit 1
  fi
  echo "Initializing database in $datadir"
  mariadb-install-db --user=mysql --datadir="$datadir" --skip-test-db \
    --auth-root-authentication-method=normal --skip-name-resolve --force >/dev/null
  mariadbd --user=mysql --datadir="$datadir" --skip-networking --skip-name-resolve \
    --socket=/run/mysqld/init.sock &
  init=$!
  until mariadb -uroot -S /run/mysqld/init.sock -e 'SELECT 1' >/dev/null 2>&1; do
    kill -0 "$init" 2>/dev/null || { echo >&2 'error: the server stopped while initialising'; exit 1; }
    sleep 0.1
  done
  q() { printf '%s' "$1" | sed "s/\\\\/\\\\\\\\/g; s/'/\\\\'/g"; }
  pw=$(q "$MYSQL_ROOT_PASSWORD")
  {
    echo "DELETE FROM mysql.user WHERE user = '' OR (user = 'root' AND host <> 'localhost');"
    echo "FLUSH PRIVILEGES;"
    echo "ALTER USER 'root'@'localhost' IDENTIFIED BY '$pw';"
    echo "CREATE USER 'root'@'%' IDENTIFIED BY '$pw';"
    echo "GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;"
    if [ -n "$MYSQL_DATABASE" ]; then
      echo "CREATE DATABASE IF NOT EXISTS \`$(q "$MYSQL_DATABASE")\`;"
    fi
    if [ -n "$MYSQL_USER" ] && [ -n "$MYSQL_PASSWORD" ]; then
      echo "CREATE USER '$(q "$MYSQL_USER")'@'%' IDENTIFIED BY '$(q "$MYSQL_PASSWORD")';"
      if [ -n "$MYSQL_DATABASE" ]; then
        echo "GRANT ALL ON \`$(q "$MYSQL_DATABASE")\`.* TO '$(q "$MYSQL_USER")'@'%';"
      fi
    fi
    echo "FLUSH PRIVILEGES;"
  } | mariadb -uroot -S /run/mysqld/init.sock
  kill "$init"
  wait "$init" || true
  echo "Database initialised; starting the server"
fi
exec mariadbd --user=mysql --datadir="$datadir" --skip-name-resolve "$@"
"#;

/// Debian's /etc/mysql/mariadb.cnf, as /etc/mysql/my.cnf (the server's first config file):
/// it includes conf.d, where the tutorial's ConfigMap goes.
const MY_CNF: &str = "[client-server]
socket = /run/mysqld/mysqld.sock

!includedir /etc/mysql/conf.d/
!includedir /etc/mysql/mariadb.conf.d/
";

/// MariaDB's server and client, the files they read, and the libraries they load.
fn mariadb_layer() -> Result<Vec<u8>> {
    let root = Path::new(MARIADB_ROOT);
    let server = root.join("usr/sbin/mariadbd");
    let client = root.join("usr/bin/mariadb");
    if !server.is_file() || !client.is_file() {
        bail!("no MariaDB in {MARIADB_ROOT}: run scripts/deps.sh");
    }
    let mut t = TarBuilder::new();
    for d in [
        "usr",
        "usr/bin",
        "usr/sbin",
        "usr/share",
        "usr/share/mysql",
        "usr/share/mysql/english",
        "usr/share/mysql/charsets",
        "lib",
        "lib64",
        "etc/mysql",
        "etc/mysql/conf.d",
        "etc/mysql/mariadb.conf.d",
        "var/lib",
        "run",
    ] {
        t.dir(d, 0o755);
    }
    // The data and socket directories belong to mysql (999), as in the official image.
    let mut data = oci::build::TarEntry::new("var/lib/mysql", oci::tar::EntryKind::Dir);
    data.mode = 0o750;
    data.uid = 999;
    data.gid = 999;
    t.entry(&data);
    let mut sock = oci::build::TarEntry::new("run/mysqld", oci::tar::EntryKind::Dir);
    sock.mode = 0o755;
    sock.uid = 999;
    sock.gid = 999;
    t.entry(&sock);
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    t.file("usr/sbin/mariadbd", 0o755, &read(&server)?);
    t.symlink("usr/sbin/mysqld", "mariadbd");
    t.file("usr/bin/mariadb", 0o755, &read(&client)?);
    t.symlink("usr/bin/mysql", "mariadb");
    for b in ["mariadb-install-db", "my_print_defaults", "resolveip"] {
        t.file(
            &format!("usr/bin/{b}"),
            0o755,
            &read(&root.join("usr/bin").join(b))?,
        );
    }
    t.symlink("usr/bin/mysql_install_db", "mariadb-install-db");
    // What mariadb-install-db feeds the server, its messages and character sets.
    for sub in ["", "english", "charsets"] {
        let dir = root.join("usr/share/mysql").join(sub);
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        // Sorted, so the layer (and the image's digest) is the same on every build.
        names.sort();
        for n in names {
            let at = Path::new("usr/share/mysql").join(sub).join(&n);
            t.file(&at.to_string_lossy(), 0o644, &read(&dir.join(&n))?);
        }
    }
    t.file("etc/mysql/my.cnf", 0o644, MY_CNF.as_bytes());
    t.file("etc/mysql/mariadb.cnf", 0o644, MY_CNF.as_bytes());
    t.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nmysql:x:999:999:MySQL Server:/var/lib/mysql:/bin/false\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    );
    t.file(
        "etc/group",
        0o644,
        b"root:x:0:\nmysql:x:999:\nnogroup:x:65534:\n",
    );
    t.dir("usr/local", 0o755).dir("usr/local/bin", 0o755);
    t.file(
        "usr/local/bin/docker-entrypoint.sh",
        0o755,
        ENTRYPOINT.as_bytes(),
    );
    let own = root.join("usr/lib/x86_64-linux-gnu");
    super::add_libraries(
        &mut t,
        &[
            &server,
            &client,
            &root.join("usr/bin/my_print_defaults"),
            &root.join("usr/bin/resolveip"),
        ],
        &own,
    )?;
    Ok(t.finish())
}

/// `mysql:5.7`: busybox and MariaDB; `docker-entrypoint.sh mysqld` on port 3306.
pub fn image() -> Result<BuiltImage> {
    let mut cfg = super::run_config(
        &["mysqld"],
        3306,
        &["LD_LIBRARY_PATH=/lib/x86_64-linux-gnu"],
    );
    cfg.entrypoint = Some(vec!["docker-entrypoint.sh".into()]);
    cfg.volumes = Some(
        [("/var/lib/mysql".to_string(), serde_json::json!({}))]
            .into_iter()
            .collect(),
    );
    Ok(ImageBuilder::new()
        .layer(&super::busybox_layer()?, Compression::Gzip)
        .layer(&mariadb_layer()?, Compression::Gzip)
        .run_config(cfg)
        .build())
}

/// The tutorial's files, as it writes them: a pod keeping its data in a hostPath, then with
/// its configuration from a ConfigMap, then with its password from a Secret.
pub const FILES: &[(&str, &str)] = &[
    (
        "mysql-pod.yaml",
        "apiVersion: v1
kind: Pod
metadata:
  name: mysql-pod
spec:
  containers:
    - name: mysql
      image: mysql:5.7
      env:
        - name: MYSQL_ROOT_PASSWORD
          value: \"123456\"
      ports:
        - containerPort: 3306
      volumeMounts:
        - mountPath: /var/lib/mysql #容器中的目录
          name: data-volume
  volumes:
    - name: data-volume
      hostPath:
        # 宿主机上目录位置
        path: /home/mysql/data
        type: DirectoryOrCreate
",
    ),
    (
        "mysql-configmap.yaml",
        "apiVersion: v1
kind: Pod
metadata:
  name: mysql-pod
  labels:
    app: mysql
spec:
  containers:
    - name: mysql
      image: mysql:5.7
      env:
        - name: MYSQL_ROOT_PASSWORD
          value: \"123456\"
      volumeMounts:
        - mountPath: /var/lib/mysql
          name: data-volume
        - mountPath: /etc/mysql/conf.d
          name: conf-volume
          readOnly: true
  volumes:
    - name: conf-volume
      configMap:
        name: mysql-config
    - name: data-volume
      hostPath:
        # directory location on host
        path: /home/mysql/data
        # this field is optional
        type: DirectoryOrCreate
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: mysql-config
data:
  mysql.cnf: |
    [mysqld]
    character-set-server=utf8mb4
    collation-server=utf8mb4_general_ci
    init-connect='SET NAMES utf8mb4'

    [client]
    default-character-set=utf8mb4

    [mysql]
    default-character-set=utf8mb4
",
    ),
    (
        "mysql-secret.yaml",
        "apiVersion: v1
kind: Secret
metadata:
  name: mysql-password
type: Opaque
data:
  PASSWORD: MTIzNDU2Cg==
---
apiVersion: v1
kind: Pod
metadata:
  name: mysql-pod
spec:
  containers:
    - name: mysql
      image: mysql:5.7
      # 在环境变量中使用 secret ，当secret修改后，环境变量不会更新，需要重启 pod
      env:
        - name: MYSQL_ROOT_PASSWORD
          valueFrom:
            secretKeyRef:
              name: mysql-password
              key: PASSWORD
              optional: false # 此值为默认值；表示secret已经存在了
      volumeMounts:
        - mountPath: /var/lib/mysql
          name: data-volume
        - mountPath: /etc/mysql/conf.d
          name: conf-volume
          readOnly: true
  volumes:
    - name: conf-volume
      configMap:
        name: mysql-config
    - name: data-volume
      hostPath:
        # directory location on host
        path: /home/mysql/data
        # this field is optional
        type: DirectoryOrCreate
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: mysql-config
data:
  mysql.cnf: |
    [mysqld]
    character-set-server=utf8mb4
    collation-server=utf8mb4_general_ci
    init-connect='SET NAMES utf8mb4'

    [client]
    default-character-set=utf8mb4

    [mysql]
    default-character-set=utf8mb4
",
    ),
];
