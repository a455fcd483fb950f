//! Where a value sits in a JSON document, kept as a linked list on the
//! stack while walking so that nothing is allocated unless a finding needs
//! its JSON pointer.

use std::fmt::Write as _;

#[derive(Clone, Copy)]
pub(crate) enum Seg<'a> {
    Root,
    Key(&'a str),
    Index(usize),
}

#[derive(Clone, Copy)]
pub(crate) struct Path<'a> {
    seg: Seg<'a>,
    parent: Option<&'a Path<'a>>,
}

impl<'a> Path<'a> {
    pub const ROOT: Path<'static> = Path {
        seg: Seg::Root,
        parent: None,
    };

    pub fn key(&'a self, key: &'a str) -> Path<'a> {
        Path {
            seg: Seg::Key(key),
            parent: Some(self),
        }
    }

    pub fn index(&'a self, i: usize) -> Path<'a> {
        Path {
            seg: Seg::Index(i),
            parent: Some(self),
        }
    }

    /// The JSON pointer (RFC 6901) of this place; `""` for the root.
    pub fn pointer(&self) -> String {
        let mut segs = Vec::new();
        let mut cur = Some(self);
        while let Some(p) = cur {
            segs.push(p.seg);
            cur = p.parent;
        }
        let mut out = String::new();
        for s in segs.iter().rev() {
            match s {
                Seg::Root => {}
                Seg::Key(k) => {
                    out.push('/');
                    for c in k.chars() {
                        match c {
                            '~' => out.push_str("~0"),
                            '/' => out.push_str("~1"),
                            c => out.push(c),
                        }
                    }
                }
                Seg::Index(i) => {
                    let _ = write!(out, "/{i}");
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers() {
        let root = Path::ROOT;
        assert_eq!(root.pointer(), "");
        let a = root.key("a/b");
        let i = a.index(3);
        let t = i.key("~x");
        assert_eq!(t.pointer(), "/a~1b/3/~0x");
    }
}
