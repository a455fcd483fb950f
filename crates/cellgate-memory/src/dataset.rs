//! A deterministic synthetic retrieval set for measuring search quality:
//! facts about invented people and projects, and queries labelled with the
//! one fact each is about. Three kinds of queries stress the two rankings
//! differently: misspelt names (full text finds no exact word), a rare
//! codename among common words that many other facts share (vectors weigh
//! every word alike), and a misspelt name with a hobby (each ranking has
//! half the evidence).

/// One fact to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fact {
    pub key: String,
    pub category: String,
    pub text: String,
}

/// What kind of difficulty a query has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueryKind {
    Misspelt,
    RareAmongCommon,
    Mixed,
}

/// A query and the key of the fact that answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelledQuery {
    pub text: String,
    pub relevant: String,
    pub kind: QueryKind,
}

/// xorshift64*: small, deterministic, good enough to pick template parts.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, list: &[&'a str]) -> &'a str {
        list[self.below(list.len())]
    }
}

const SYLLABLES: &[&str] = &[
    "ta", "mo", "ri", "ka", "lu", "ven", "dor", "sel", "mi", "ba", "zo", "quin", "fa", "ne", "tho",
    "gar", "li", "pe", "wen", "su", "ro", "da", "kel", "vi", "nor", "ash", "bel", "cor", "eth",
    "hal", "brin", "cas", "dru", "fen", "gil", "hux", "jor", "kip", "lom", "mur", "nix", "ost",
    "pry", "quo", "rud", "sk", "tev", "ulm", "vad", "wyk", "xan", "yor", "zed", "ald", "bry",
    "cwen", "dax", "elm", "fro", "grim", "hask", "ilv", "jun", "kra", "lys", "mab", "nev", "orr",
    "pim", "rax",
];
const JOBS: &[&str] = &[
    "baker",
    "pilot",
    "nurse",
    "architect",
    "carpenter",
    "chemist",
    "translator",
    "librarian",
    "surveyor",
    "plumber",
    "geologist",
    "florist",
    "jeweller",
    "locksmith",
    "cartographer",
    "beekeeper",
    "glassblower",
    "welder",
    "tailor",
    "veterinarian",
];
const CITIES: &[&str] = &[
    "Lisbon", "Oslo", "Quito", "Hanoi", "Dakar", "Perth", "Lyon", "Tallinn", "Cusco", "Nairobi",
    "Porto", "Bergen", "Kyoto", "Tunis", "Gdansk", "Hobart", "Malaga", "Riga", "Accra", "Sapporo",
];
const HOBBIES: &[&str] = &[
    "origami",
    "birdwatching",
    "fencing",
    "pottery",
    "kayaking",
    "calligraphy",
    "juggling",
    "archery",
    "beekeeping",
    "woodcarving",
    "astronomy",
    "falconry",
    "bouldering",
    "knitting",
    "sailing",
    "chess",
    "fermentation",
    "orienteering",
    "taxidermy",
    "marquetry",
    "bonsai",
    "lacemaking",
    "curling",
    "dominoes",
    "skydiving",
    "mosaics",
    "ventriloquism",
    "harpsichord",
    "geocaching",
    "embroidery",
];
/// Sentences many facts share: the common words of the second query kind.
const FILLER: &[&str] = &[
    "The weekly meeting schedule moved to Thursday afternoon.",
    "The deadline for the quarterly budget report is next month.",
    "Travel expenses need approval from the budget committee before the deadline.",
    "The team meeting notes are shared in the project folder.",
    "A schedule change for the office move is expected soon.",
];

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn word(rng: &mut Rng, syllables: usize) -> String {
    (0..syllables).map(|_| rng.pick(SYLLABLES)).collect()
}

/// `n` facts, the same for the same `seed`. Names and codenames are
/// unique.
pub fn facts(n: usize, seed: u64) -> Vec<Fact> {
    // Three syllables give 70^3 = 343,000 codenames: plenty for the
    // quality set, too few to stay unique at benchmark sizes.
    let codename_syllables = if n > 100_000 { 4 } else { 3 };
    let mut rng = Rng(seed | 1);
    let mut used = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let first = capitalise(&word(&mut rng, 2));
        let last = capitalise(&word(&mut rng, 3));
        let codename = capitalise(&word(&mut rng, codename_syllables));
        if !used.insert(format!("{first} {last}")) || !used.insert(codename.clone()) {
            continue;
        }
        let i = out.len();
        let mut text = format!(
            "{first} {last} works as a {} in {}. In spare time {first} enjoys {}. {first} leads the {codename} project.",
            rng.pick(JOBS),
            rng.pick(CITIES),
            rng.pick(HOBBIES),
        );
        // Most facts carry generic sentences; the fact a codename query is
        // about may or may not.
        for _ in 0..rng.below(4) {
            text.push(' ');
            text.push_str(rng.pick(FILLER));
        }
        out.push(Fact {
            key: format!("fact-{i:05}"),
            category: "people".into(),
            text,
        });
    }
    out
}

/// Drops or swaps one letter past the first two, so the word no longer
/// matches exactly but keeps most of its character trigrams.
fn misspell(rng: &mut Rng, w: &str) -> String {
    let mut chars: Vec<char> = w.chars().collect();
    if chars.len() < 5 {
        return w.to_owned();
    }
    let at = 2 + rng.below(chars.len() - 3);
    if rng.below(2) == 0 {
        chars.remove(at);
    } else {
        chars.swap(at, at + 1);
        if chars.iter().collect::<String>() == w {
            chars.remove(at);
        }
    }
    chars.into_iter().collect()
}

/// `per_kind` queries of each [`QueryKind`] about distinct facts.
pub fn queries(facts: &[Fact], per_kind: usize, seed: u64) -> Vec<LabelledQuery> {
    let mut rng = Rng(seed | 1);
    let mut out = Vec::new();
    let step = (facts.len() / (3 * per_kind).max(1)).max(1);
    for (n, fact) in facts.iter().step_by(step).take(3 * per_kind).enumerate() {
        let words: Vec<&str> = fact.text.split_whitespace().collect();
        let (first, last) = (words[0], words[1]);
        let codename = words
            .iter()
            .position(|w| *w == "leads")
            .and_then(|i| words.get(i + 2))
            .copied()
            .unwrap_or(first);
        let hobby = words
            .iter()
            .position(|w| *w == "enjoys")
            .and_then(|i| words.get(i + 1))
            .map(|w| w.trim_end_matches('.'))
            .unwrap_or(last);
        let (kind, text) = match n % 3 {
            0 => (
                QueryKind::Misspelt,
                format!(
                    "what does {} {} do",
                    misspell(&mut rng, first),
                    misspell(&mut rng, last)
                ),
            ),
            1 => (
                QueryKind::RareAmongCommon,
                format!("{codename} weekly meeting schedule budget deadline"),
            ),
            _ => (
                QueryKind::Mixed,
                format!("{} who likes {hobby}", misspell(&mut rng, last)),
            ),
        };
        out.push(LabelledQuery {
            text,
            relevant: fact.key.clone(),
            kind,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_sized() {
        let a = facts(2000, 7);
        assert_eq!(a.len(), 2000);
        assert_eq!(a, facts(2000, 7));
        let q = queries(&a, 70, 11);
        assert_eq!(q.len(), 210);
        assert_eq!(q, queries(&a, 70, 11));
        for kind in [
            QueryKind::Misspelt,
            QueryKind::RareAmongCommon,
            QueryKind::Mixed,
        ] {
            assert_eq!(q.iter().filter(|x| x.kind == kind).count(), 70);
        }
    }

    #[test]
    fn misspelling_changes_the_word() {
        let mut rng = Rng(3);
        for w in ["Tamoriven", "Kalusel", "Dorvenmi"] {
            let m = misspell(&mut rng, w);
            assert_ne!(m, w);
            assert!(m.len() + 1 >= w.len());
        }
    }
}
