//! The cluster's PKI, made at the first start and kept in `<root>/server/tls/` (keys 0600 in a
//! 0700 directory), as kubeadm shapes it: a cluster CA; the API server's serving certificate,
//! whose SANs cover 127.0.0.1, the node's addresses, `kubernetes`, `kubernetes.default`,
//! `kubernetes.default.svc`, `kubernetes.default.svc.cluster.local` and the `kubernetes`
//! Service's ClusterIP; an admin client certificate (CN `kubernetes-admin`, O
//! `system:masters`); and a static admin bearer token. A later start reuses the CA, so
//! kubeconfigs stay valid; the serving certificate is made again when the addresses changed.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// Why the PKI could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("making a certificate: {0}")]
    Cert(#[from] rcgen::Error),
}

/// The PEM files of the cluster's PKI.
pub struct Pki {
    pub ca_cert: String,
    pub serving_cert: String,
    pub serving_key: String,
    pub admin_cert: String,
    pub admin_key: String,
    /// The API server's client certificate toward node agents (their kubelet API).
    pub kubelet_client_cert: String,
    pub kubelet_client_key: String,
    /// The admin bearer token.
    pub token: String,
}

/// The names and addresses the serving certificate covers.
pub fn serving_sans(addresses: &[IpAddr], service_ip: IpAddr) -> Vec<SanType> {
    let mut sans: Vec<SanType> = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    .iter()
    .filter_map(|n| SanType::DnsName((*n).try_into().ok()?).into())
    .collect();
    let mut ips = vec![IpAddr::from([127, 0, 0, 1]), service_ip];
    for a in addresses {
        if !ips.contains(a) {
            ips.push(*a);
        }
    }
    sans.extend(ips.into_iter().map(SanType::IpAddress));
    sans
}

fn write_private(path: &Path, text: &str, mode: u32) -> Result<(), PkiError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |what| {
        move |source| PkiError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    };
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io("creating"))?;
    std::io::Write::write_all(&mut f, text.as_bytes()).map_err(io("writing"))?;
    f.sync_all().map_err(io("syncing"))?;
    std::fs::rename(&tmp, path).map_err(io("renaming"))
}

fn read(path: &Path) -> Result<Option<String>, PkiError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::Io {
            what: "reading",
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn leaf(cn: &str, org: Option<&str>, server: bool) -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, cn);
    if let Some(o) = org {
        p.distinguished_name.push(DnType::OrganizationName, o);
    }
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    // Valid for ten years, from yesterday (clock skew between nodes).
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::days(1);
    p.not_after = now + time::Duration::days(3650);
    Ok(p)
}

/// Makes the PKI under `dir` (0700), or reads what an earlier start made.
pub fn ensure(dir: &Path, addresses: &[IpAddr], service_ip: IpAddr) -> Result<Pki, PkiError> {
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        what: "creating",
        path: dir.to_path_buf(),
        source,
    })?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(
            |source| PkiError::Io {
                what: "securing",
                path: dir.to_path_buf(),
                source,
            },
        )?;
    }
    let path = |f: &str| dir.join(f);
    // The CA.
    let (ca_cert, ca_key) = match (read(&path("ca.crt"))?, read(&path("ca.key"))?) {
        (Some(c), Some(k)) => (c, KeyPair::from_pem(&k)?),
        _ => {
            let key = KeyPair::generate()?;
            let mut p = CertificateParams::new(Vec::<String>::new())?;
            p.distinguished_name.push(DnType::CommonName, "knode-ca");
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let now = time::OffsetDateTime::now_utc();
            p.not_before = now - time::Duration::days(1);
            p.not_after = now + time::Duration::days(3650);
            let cert = p.self_signed(&key)?;
            write_private(&path("ca.key"), &key.serialize_pem(), 0o600)?;
            write_private(&path("ca.crt"), &cert.pem(), 0o644)?;
            // Everything signed by an older CA is made again.
            for f in ["serving.crt", "admin.crt", "kubelet-client.crt"] {
                let _ = std::fs::remove_file(path(f));
            }
            (cert.pem(), key)
        }
    };
    let issuer = Issuer::from_ca_cert_pem(&ca_cert, &ca_key)?;
    // The serving certificate, made again when its SANs changed.
    let sans = serving_sans(addresses, service_ip);
    let sans_text = format!("{sans:?}");
    let serving = match (
        read(&path("serving.crt"))?,
        read(&path("serving.key"))?,
        read(&path("serving.sans"))?,
    ) {
        (Some(c), Some(k), Some(s)) if s == sans_text => (c, k),
        _ => {
            let key = KeyPair::generate()?;
            let mut p = leaf("kube-apiserver", None, true)?;
            p.subject_alt_names = sans;
            let cert = p.signed_by(&key, &issuer)?;
            write_private(&path("serving.key"), &key.serialize_pem(), 0o600)?;
            write_private(&path("serving.crt"), &cert.pem(), 0o644)?;
            write_private(&path("serving.sans"), &sans_text, 0o600)?;
            (cert.pem(), key.serialize_pem())
        }
    };
    let admin = match (read(&path("admin.crt"))?, read(&path("admin.key"))?) {
        (Some(c), Some(k)) => (c, k),
        _ => {
            let key = KeyPair::generate()?;
            let p = leaf("kubernetes-admin", Some("system:masters"), false)?;
            let cert = p.signed_by(&key, &issuer)?;
            write_private(&path("admin.key"), &key.serialize_pem(), 0o600)?;
            write_private(&path("admin.crt"), &cert.pem(), 0o644)?;
            (cert.pem(), key.serialize_pem())
        }
    };
    let kubelet_client = match (
        read(&path("kubelet-client.crt"))?,
        read(&path("kubelet-client.key"))?,
    ) {
        (Some(c), Some(k)) => (c, k),
        _ => {
            let key = KeyPair::generate()?;
            let p = leaf(crate::api::KUBELET_CLIENT, Some("system:masters"), false)?;
            let cert = p.signed_by(&key, &issuer)?;
            write_private(&path("kubelet-client.key"), &key.serialize_pem(), 0o600)?;
            write_private(&path("kubelet-client.crt"), &cert.pem(), 0o644)?;
            (cert.pem(), key.serialize_pem())
        }
    };
    let token = match read(&path("admin.token"))? {
        Some(t) if t.trim().len() >= 32 => t.trim().to_string(),
        _ => {
            let mut b = [0u8; 32];
            rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()).map_err(
                |e| PkiError::Io {
                    what: "drawing random bytes for",
                    path: path("admin.token"),
                    source: e.into(),
                },
            )?;
            let t: String = b.iter().map(|x| format!("{x:02x}")).collect();
            write_private(&path("admin.token"), &format!("{t}\n"), 0o600)?;
            t
        }
    };
    Ok(Pki {
        ca_cert,
        serving_cert: serving.0,
        serving_key: serving.1,
        admin_cert: admin.0,
        admin_key: admin.1,
        kubelet_client_cert: kubelet_client.0,
        kubelet_client_key: kubelet_client.1,
        token,
    })
}

/// An admin kubeconfig for `server` (`https://HOST:PORT`), with the client certificate embedded
/// (context `knode`).
pub fn admin_kubeconfig(pki: &Pki, server: &str) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: knode\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: knode-admin\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: knode\n  context:\n    cluster: knode\n    user: knode-admin\ncurrent-context: knode\npreferences: {{}}\n",
        b64(&pki.ca_cert),
        b64(&pki.admin_cert),
        b64(&pki.admin_key)
    )
}

/// Writes a file only root may read, atomically.
pub fn write_secret_file(path: &Path, text: &str) -> std::io::Result<()> {
    write_private(path, text, 0o600).map_err(|e| std::io::Error::other(e.to_string()))
}

/// Writes a kubeconfig (0600: it holds a key).
pub fn write_kubeconfig(path: &Path, text: &str) -> Result<(), PkiError> {
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).map_err(|source| PkiError::Io {
            what: "creating",
            path: d.to_path_buf(),
            source,
        })?;
    }
    write_private(path, text, 0o600)
}
