//! Roles: a name, a level in a hierarchy, and a set of permissions.

use std::collections::HashMap;
use std::fmt;

use cellgate_config::RoleSet;
use serde::{Deserialize, Serialize};

/// What a role allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    Read,
    Write,
    Execute,
    Admin,
    /// Grant roles (up to one's own level) to others: API keys, tokens, users.
    Delegate,
}

impl Permission {
    pub const ALL: [Permission; 5] = [
        Permission::Read,
        Permission::Write,
        Permission::Execute,
        Permission::Admin,
        Permission::Delegate,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::Execute => "execute",
            Permission::Admin => "admin",
            Permission::Delegate => "delegate",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Permissions(u8);

impl Permissions {
    pub fn of(list: &[Permission]) -> Self {
        Self(list.iter().fold(0, |acc, p| acc | p.bit()))
    }
    pub fn all() -> Self {
        Self::of(&Permission::ALL)
    }
    pub fn contains(self, p: Permission) -> bool {
        self.0 & p.bit() != 0
    }
    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
    pub fn iter(self) -> impl Iterator<Item = Permission> {
        Permission::ALL
            .into_iter()
            .filter(move |p| self.contains(*p))
    }
}

impl fmt::Display for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Permission::as_str).collect();
        f.write_str(&names.join(","))
    }
}

impl Serialize for Permissions {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Permissions {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let list = Vec::<Permission>::deserialize(d)?;
        Ok(Self::of(&list))
    }
}

/// A role: its level orders it in the hierarchy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub name: String,
    pub level: u32,
    pub permissions: Permissions,
}

impl Role {
    fn new(name: &str, level: u32, permissions: &[Permission]) -> Self {
        Self {
            name: name.to_owned(),
            level,
            permissions: Permissions::of(permissions),
        }
    }
}

/// The roles known in one tenant: the built-in set plus the tenant's own
/// (which may redefine a built-in name for that tenant).
#[derive(Debug, Clone, Default)]
pub struct Roles {
    by_name: HashMap<String, Role>,
}

impl Roles {
    /// The built-in hierarchy.
    pub fn builtin(set: RoleSet) -> Self {
        use Permission::*;
        let list = match set {
            RoleSet::Standard => vec![
                Role::new("viewer", 10, &[Read]),
                Role::new("developer", 20, &[Read, Execute]),
                Role::new("operator", 30, &[Read, Execute, Write]),
                Role::new("team_lead", 40, &[Read, Execute, Write, Delegate]),
                Role::new("admin", 50, &[Read, Execute, Write, Delegate, Admin]),
            ],
            RoleSet::Governance => vec![
                Role::new("read_only", 10, &[Read]),
                Role::new("operator", 20, &[Read, Execute]),
                Role::new("coordinator", 30, &[Read, Execute, Write]),
                Role::new("governance", 40, &[Read, Execute, Write, Delegate]),
                Role::new("emergency", 50, &[Read, Execute, Write, Delegate, Admin]),
            ],
        };
        Self {
            by_name: list.into_iter().map(|r| (r.name.clone(), r)).collect(),
        }
    }

    /// These roles with `custom` added (replacing built-ins of the same name).
    pub fn with(&self, custom: impl IntoIterator<Item = Role>) -> Self {
        let mut by_name = self.by_name.clone();
        for r in custom {
            by_name.insert(r.name.clone(), r);
        }
        Self { by_name }
    }

    pub fn get(&self, name: &str) -> Option<&Role> {
        self.by_name.get(name)
    }

    pub fn all(&self) -> impl Iterator<Item = &Role> {
        self.by_name.values()
    }

    /// The highest level and the union of permissions of `names`; unknown
    /// names count for nothing (deny by default).
    pub fn effective(&self, names: &[String]) -> (u32, Permissions) {
        names
            .iter()
            .filter_map(|n| self.get(n))
            .fold((0, Permissions::default()), |(lvl, perms), r| {
                (lvl.max(r.level), perms.union(r.permissions))
            })
    }

    /// Resolves `min_role` text: a number, or a role name standing for its level.
    pub fn level_of(&self, text: &str) -> Option<u32> {
        text.parse::<u32>()
            .ok()
            .or_else(|| self.get(text).map(|r| r.level))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hierarchy_and_unknown_roles() {
        let roles = Roles::builtin(RoleSet::Standard);
        let (lvl, perms) = roles.effective(&["developer".into(), "viewer".into()]);
        assert_eq!(lvl, 20);
        assert!(perms.contains(Permission::Execute) && !perms.contains(Permission::Write));
        assert_eq!(
            roles.effective(&["root".into()]),
            (0, Permissions::default())
        );
        assert_eq!(roles.level_of("team_lead"), Some(40));
        assert_eq!(roles.level_of("35"), Some(35));
        assert_eq!(roles.level_of("nobody"), None);
        let gov = Roles::builtin(RoleSet::Governance);
        assert_eq!(gov.level_of("coordinator"), Some(30));
        assert!(gov.get("admin").is_none());
    }

    #[test]
    fn tenant_roles_extend_and_override() {
        let roles = Roles::builtin(RoleSet::Standard).with([
            Role::new("auditor", 15, &[Permission::Read]),
            Role::new("viewer", 5, &[]),
        ]);
        assert_eq!(roles.level_of("auditor"), Some(15));
        assert_eq!(
            roles.effective(&["viewer".into()]),
            (5, Permissions::default())
        );
    }

    #[test]
    fn permissions_serialize_as_names() {
        let p = Permissions::of(&[Permission::Write, Permission::Read]);
        assert_eq!(serde_json::to_string(&p).unwrap(), r#"["read","write"]"#);
        let back: Permissions = serde_json::from_str(r#"["write","read"]"#).unwrap();
        assert_eq!(back, p);
        assert_eq!(p.to_string(), "read,write");
    }
}
