/// File names of QEMU's `file` protocol: `file:PATH` names `PATH`.
public enum FileProtocolName {
  /// Whether a name starts with a protocol prefix (QEMU's `path_has_protocol`:
  /// a colon before any slash).
  public static func hasProtocol(_ name: String) -> Bool {
    guard let stop = name.firstIndex(where: { $0 == ":" || $0 == "/" }) else { return false }
    return name[stop] == ":"
  }

  /// The path a name stands for once an explicit `file:` prefix is removed
  /// (QEMU's `bdrv_parse_filename_strip_prefix`): when what is left would
  /// itself look like a protocol name (`file:a:b` → `a:b`), it becomes
  /// `./a:b`. Names without the prefix are returned unchanged.
  public static func path(of name: String) -> String {
    guard name.hasPrefix("file:") else { return name }
    let path = String(name.dropFirst(5))
    return hasProtocol(path) ? "./" + path : path
  }
}
