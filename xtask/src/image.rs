//! `cargo xtask image`: the container image, built offline FROM scratch (Containerfile at
//! the workspace root). The context is the release binary plus exactly the shared libraries
//! `ldd` lists for it, the dynamic loader included, under their own paths.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{
    setup,
    util::{cargo, output, run, step, workspace_root},
};

#[derive(clap::Args)]
pub struct ImageArgs {
    /// Container engine to build with: podman or docker (default: podman if installed, else
    /// docker if its daemon answers, else Debian's podman is installed).
    #[arg(long)]
    pub engine: Option<String>,
}

/// Repository and tag of the image: what deploy/kubernetes/netns-agent.yaml runs.
pub const REPOSITORY: &str = "netns-agent";

pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// `netns-agent:<version>`.
pub fn tag() -> String {
    format!("{REPOSITORY}:{}", version())
}

/// The fully qualified name an unqualified `netns-agent:<version>` means to Docker, containerd
/// and the kubelet; the saved archive carries it so `ctr images import` names it that way.
pub fn qualified_tag() -> String {
    format!("docker.io/library/{}", tag())
}

pub struct Built {
    pub engine: String,
    pub tag: String,
    /// `<engine> save` output (docker-archive format), loadable by docker, podman and ctr.
    pub archive: PathBuf,
    pub size_bytes: u64,
    pub revision: String,
}

/// The engine to use: the one asked for, else podman, else a running docker, else Debian's
/// podman (installed now).
pub fn engine(preferred: Option<&str>) -> Result<String> {
    let usable = |name: &str| match name {
        "podman" => output("podman", &["--version"]).is_some(),
        "docker" => output("docker", &["info", "--format", "{{.ServerVersion}}"]).is_some(),
        _ => false,
    };
    if let Some(name) = preferred {
        ensure!(name == "podman" || name == "docker", "--engine must be podman or docker, not {name}");
        if !usable(name) && name == "podman" {
            setup::apt(setup::PODMAN_PACKAGES)?;
        }
        ensure!(usable(name), "{name} is not usable here (for docker: is dockerd running?)");
        return Ok(name.to_owned());
    }
    if usable("podman") {
        return Ok("podman".into());
    }
    if usable("docker") {
        return Ok("docker".into());
    }
    setup::apt(setup::PODMAN_PACKAGES)?;
    ensure!(usable("podman"), "podman installed but does not run");
    Ok("podman".into())
}

pub fn build(args: &ImageArgs) -> Result<Built> {
    setup::build_tools()?;
    let engine = engine(args.engine.as_deref())?;
    step("building the agent (release)");
    cargo(&["build", "--release", "-p", "netns-agent"])?;
    let root = workspace_root();
    let agent = root.join("target/release/netns-agent");
    let reported = output(agent.to_str().unwrap(), &["--version"]).context("netns-agent --version")?;
    ensure!(
        reported.trim() == format!("netns-agent {}", version()),
        "the binary reports {:?}, the image would be tagged {}",
        reported.trim(),
        version()
    );

    step(&format!("image {} with {engine}", tag()));
    let dir = root.join("target/image");
    let context = dir.join("context");
    let _ = std::fs::remove_dir_all(&context);
    let rootfs = context.join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    let bin = rootfs.join("usr/local/bin/netns-agent");
    std::fs::create_dir_all(bin.parent().unwrap())?;
    // Symbols are for debugging the host build; the image gets the stripped binary.
    run(Command::new("strip").arg("--strip-all").arg(&agent).arg("-o").arg(&bin))?;
    for lib in shared_libraries(&agent)? {
        let dest = rootfs.join(lib.strip_prefix("/").unwrap_or(&lib));
        std::fs::create_dir_all(dest.parent().unwrap())?;
        // Copies the file a symlink points to, under the name the binary asks for.
        std::fs::copy(&lib, &dest).with_context(|| format!("copying {}", lib.display()))?;
    }
    // Where the volumes go, for runtimes that do not create mount points in a read-only root.
    for dir in ["var/log/netns-agent", "var/lib/cni/results", "tmp"] {
        std::fs::create_dir_all(rootfs.join(dir))?;
    }

    let revision = output("git", &["-C", root.to_str().unwrap(), "rev-parse", "HEAD"])
        .map(|r| r.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let dirty = output("git", &["-C", root.to_str().unwrap(), "status", "--porcelain"])
        .is_some_and(|s| !s.trim().is_empty());
    let revision = if dirty { format!("{revision}-dirty") } else { revision };
    let created = output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]).unwrap_or_default();
    let mut cmd = Command::new(&engine);
    cmd.arg("build")
        .arg("-f")
        .arg(root.join("Containerfile"))
        .args(["--build-arg", &format!("VERSION={}", version())])
        .args(["--build-arg", &format!("REVISION={revision}")])
        .args(["--build-arg", &format!("CREATED={}", created.trim())])
        .args(["-t", &tag(), "-t", &qualified_tag()])
        // The labels carry this build's revision and time: no layer from an earlier build.
        .arg("--no-cache");
    if engine == "podman" {
        // FROM scratch: nothing to pull; a registry is never contacted.
        cmd.arg("--pull=never");
    }
    run(cmd.arg(&context))?;

    let archive = dir.join(format!("{REPOSITORY}-{}.tar", version()));
    let _ = std::fs::remove_file(&archive);
    let mut save = Command::new(&engine);
    save.arg("save");
    if engine == "podman" {
        save.args(["--format", "docker-archive"]);
    }
    run(save.arg("-o").arg(&archive).arg(qualified_tag()))?;
    let size_bytes = output(&engine, &["image", "inspect", "--format", "{{.Size}}", &tag()])
        .and_then(|s| s.trim().parse().ok())
        .context("image size")?;
    eprintln!(
        "image {} ({}): {:.1} MB; saved to {} ({:.1} MB)\n  load it on a node: \
         ssh NODE ctr -n k8s.io images import - < ARCHIVE, or docker load / podman load -i ARCHIVE",
        tag(),
        engine,
        size_bytes as f64 / 1e6,
        archive.display(),
        std::fs::metadata(&archive)?.len() as f64 / 1e6,
    );
    Ok(Built { engine, tag: tag(), archive, size_bytes, revision })
}

/// The shared libraries a binary loads, the dynamic loader included (ldd's view).
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(binary).output().context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("not a dynamic executable") || text.contains("statically linked") {
        return Ok(Vec::new());
    }
    ensure!(
        out.status.success(),
        "ldd {} failed: {}",
        binary.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    parse_ldd(&text)
}

fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)", "/lib64/ld-linux-x86-64.so.2 (0x...)",
        // "linux-vdso.so.1 (0x...)" (in the kernel, no file).
        let path = match line.split_once("=>") {
            Some((name, rest)) => {
                let path = rest.split_whitespace().next().unwrap_or("");
                if path == "not" {
                    bail!("ldd: {} not found", name.trim());
                }
                path
            }
            None => line.split_whitespace().next().unwrap_or(""),
        };
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    ensure!(libs.iter().any(|l| l.to_string_lossy().contains("ld-linux")), "ldd listed no dynamic loader");
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_libraries_and_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f1)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f3)\n";
        let libs = parse_ldd(text).unwrap();
        assert_eq!(
            libs,
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(parse_ldd("\tlibfoo.so => not found\n").is_err());
    }
}
