//! Path operations of the replacement strings (`{.}`, `{/}`, `{//}`), on bytes: a
//! path on Unix need not be UTF-8, and the separators looked for are ASCII.

/// The position of the last `byte` in `bytes`.
pub(super) fn rfind(bytes: &[u8], byte: u8) -> Option<usize> {
    bytes.iter().rposition(|&b| b == byte)
}

/// `bytes` without the `byte`s at its end.
pub(super) fn trim_end(bytes: &[u8], byte: u8) -> &[u8] {
    let keep = bytes.iter().rposition(|&b| b != byte).map_or(0, |i| i + 1);
    &bytes[..keep]
}

/// `{/}`: everything after the last `/` (GNU parallel's `s:.*/::`).
pub(super) fn basename(path: &[u8]) -> &[u8] {
    match rfind(path, b'/') {
        Some(slash) => &path[slash + 1..],
        None => path,
    }
}

/// `{//}`: POSIX `dirname(1)`.
pub(super) fn dirname(path: &[u8]) -> &[u8] {
    if path.is_empty() {
        return b".";
    }
    let trimmed = trim_end(path, b'/');
    if trimmed.is_empty() {
        return b"/";
    }
    match rfind(trimmed, b'/') {
        None => b".",
        Some(slash) => {
            let parent = trim_end(&trimmed[..slash], b'/');
            if parent.is_empty() {
                b"/"
            } else {
                parent
            }
        }
    }
}

/// `{.}`: removes a final `.ext` where `ext` is non-empty and has no `/` or
/// `.`, unless only dots precede that dot in its path component (a hidden
/// file such as `.bashrc` has no extension).
pub(super) fn remove_extension(path: &[u8]) -> &[u8] {
    let Some(dot) = rfind(path, b'.') else {
        return path;
    };
    let extension = &path[dot + 1..];
    if extension.is_empty() || extension.contains(&b'/') {
        return path;
    }
    let component_start = rfind(&path[..dot], b'/').map_or(0, |slash| slash + 1);
    if path[component_start..dot].iter().all(|&b| b == b'.') {
        return path;
    }
    &path[..dot]
}
