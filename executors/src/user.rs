//! Resolution of Docker's `User` setting against the image's own
//! `/etc/passwd` and `/etc/group`.
//!
//! The rules follow Docker's runtime: numeric ids need no passwd entry, a
//! name must have one, the primary group comes from the passwd entry unless
//! a group is given, and `HOME` is the entry's home directory or `/`.

use sidewhale_core::ExecutorError;

/// The ids and home directory a process runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

impl ResolvedUser {
    pub fn is_root(&self) -> bool {
        self.uid == 0 && self.gid == 0
    }
}

/// One line of a passwd file.
struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

/// Resolves `spec` (empty, `name`, `uid`, `name:group` or `uid:gid`)
/// against the contents of the image's passwd and group files, `None`
/// when a file is missing.
pub(crate) fn resolve_user(
    spec: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<ResolvedUser, ExecutorError> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (spec, None),
    };
    let entries: Vec<PasswdEntry> = passwd.map(parse_passwd).unwrap_or_default();

    let mut resolved = resolve_user_part(user_part, &entries)?;

    if let Some(group_part) = group_part.filter(|g| !g.is_empty()) {
        resolved.gid = resolve_group(group_part, group)?;
    }
    Ok(resolved)
}

/// Returns the groups a process of `user` belongs to, as `initgroups(3)`
/// computes them: its primary gid, plus every group in the image's group
/// file that lists the passwd name of `user.uid` as a member. Sorted and
/// without duplicates.
pub(crate) fn supplementary_groups(
    user: &ResolvedUser,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Vec<u32> {
    let mut gids = vec![user.gid];
    let entries: Vec<PasswdEntry> = passwd.map(parse_passwd).unwrap_or_default();

    if let Some(entry) = entries.iter().find(|entry| entry.uid == user.uid) {
        let member_of = group
            .into_iter()
            .flat_map(str::lines)
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (_, gid) = parse_group_line(line)?;
                let members = line.split(':').nth(3)?;
                members
                    .split(',')
                    .any(|member| member.trim() == entry.name)
                    .then_some(gid)
            });
        gids.extend(member_of);
    }

    gids.sort_unstable();
    gids.dedup();
    gids
}

fn resolve_user_part(
    user_part: &str,
    entries: &[PasswdEntry],
) -> Result<ResolvedUser, ExecutorError> {
    // An empty user means uid 0, looked up like any uid so that HOME comes
    // from the image (usually /root).
    let user_part = if user_part.is_empty() { "0" } else { user_part };

    if let Ok(uid) = user_part.parse::<u32>() {
        let entry = entries.iter().find(|entry| entry.uid == uid);
        return Ok(ResolvedUser {
            uid,
            gid: entry.map_or(0, |entry| entry.gid),
            home: entry.map_or("/", |entry| entry.home).to_string(),
        });
    }

    match entries.iter().find(|entry| entry.name == user_part) {
        Some(entry) => Ok(ResolvedUser {
            uid: entry.uid,
            gid: entry.gid,
            home: entry.home.to_string(),
        }),
        // Images without a passwd file still run as "root".
        None if user_part == "root" => Ok(ResolvedUser {
            uid: 0,
            gid: 0,
            home: "/root".to_string(),
        }),
        None => Err(ExecutorError::UnknownUser(user_part.to_string())),
    }
}

fn resolve_group(group_part: &str, group_file: Option<&str>) -> Result<u32, ExecutorError> {
    if let Ok(gid) = group_part.parse::<u32>() {
        return Ok(gid);
    }

    group_file
        .into_iter()
        .flat_map(str::lines)
        .filter_map(parse_group_line)
        .find(|(name, _)| *name == group_part)
        .map(|(_, gid)| gid)
        .ok_or_else(|| {
            ExecutorError::Other(format!(
                "unable to find group {group_part}: no matching entries in group file"
            ))
        })
}

/// Parses `name:password:uid:gid:gecos:home:shell` lines, skipping
/// comments and malformed lines as glibc does.
fn parse_passwd(text: &str) -> Vec<PasswdEntry<'_>> {
    text.lines().filter_map(parse_passwd_line).collect()
}

fn parse_passwd_line(line: &str) -> Option<PasswdEntry<'_>> {
    if line.starts_with('#') {
        return None;
    }

    let fields: Vec<&str> = line.split(':').collect();
    if fields.len() < 6 {
        return None;
    }
    Some(PasswdEntry {
        name: fields[0],
        uid: fields[2].parse().ok()?,
        gid: fields[3].parse().ok()?,
        home: fields[5],
    })
}

/// Parses a `name:password:gid:members` line into `(name, gid)`.
fn parse_group_line(line: &str) -> Option<(&str, u32)> {
    if line.starts_with('#') {
        return None;
    }

    let mut fields = line.split(':');
    let name = fields.next()?;
    let gid = fields.nth(1)?.parse().ok()?;
    Some((name, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
# a comment
broken line
postgres:x:999:998:PostgreSQL:/var/lib/postgresql:/bin/bash
app:x:1000:1000::/home/app:/bin/sh
";
    const GROUP: &str = "\
root:x:0:
postgres:x:998:
staff:x:50:app
";

    fn resolve(spec: &str) -> Result<ResolvedUser, ExecutorError> {
        resolve_user(spec, Some(PASSWD), Some(GROUP))
    }

    fn user(uid: u32, gid: u32, home: &str) -> ResolvedUser {
        ResolvedUser {
            uid,
            gid,
            home: home.to_string(),
        }
    }

    #[test]
    fn root_spellings() {
        for spec in ["", "root", "0", "0:0", "root:root"] {
            assert_eq!(resolve(spec).unwrap(), user(0, 0, "/root"), "spec {spec:?}");
        }
    }

    #[test]
    fn name_uses_passwd_entry() {
        assert_eq!(
            resolve("postgres").unwrap(),
            user(999, 998, "/var/lib/postgresql")
        );
    }

    #[test]
    fn uid_uses_passwd_entry_when_present() {
        assert_eq!(resolve("1000").unwrap(), user(1000, 1000, "/home/app"));
        assert_eq!(resolve("4242").unwrap(), user(4242, 0, "/"));
    }

    #[test]
    fn group_overrides_primary_group() {
        assert_eq!(resolve("app:staff").unwrap(), user(1000, 50, "/home/app"));
        assert_eq!(resolve("1000:1000").unwrap(), user(1000, 1000, "/home/app"));
        assert_eq!(resolve("4242:77").unwrap(), user(4242, 77, "/"));
    }

    #[test]
    fn unknown_name_is_rejected() {
        assert!(matches!(
            resolve("nobody"),
            Err(ExecutorError::UnknownUser(name)) if name == "nobody"
        ));
        assert!(matches!(
            resolve("app:nogroup"),
            Err(ExecutorError::Other(_))
        ));
    }

    #[test]
    fn supplementary_groups_come_from_group_file() {
        let app = resolve("app").unwrap();
        let unknown = resolve("4242:77").unwrap();

        assert_eq!(
            supplementary_groups(&app, Some(PASSWD), Some(GROUP)),
            vec![50, 1000]
        );
        assert_eq!(
            supplementary_groups(&unknown, Some(PASSWD), Some(GROUP)),
            vec![77]
        );
        assert_eq!(supplementary_groups(&app, Some(PASSWD), None), vec![1000]);
    }

    #[test]
    fn missing_files_allow_ids_and_root() {
        assert_eq!(
            resolve_user("1000:1000", None, None).unwrap(),
            user(1000, 1000, "/")
        );
        assert_eq!(
            resolve_user("root", None, None).unwrap(),
            user(0, 0, "/root")
        );
        assert!(resolve_user("app", None, None).is_err());
    }
}
