/// The order in which QEMU's `QDict` iterates its keys, which decides how
/// QEMU prints the `json:` names it makes of option sets
/// (`bdrv_refresh_filename`): by bucket of QEMU's `tdb_hash` modulo 512,
/// the last key inserted first within a bucket.
enum QDictOrder {
  /// QEMU's `QDICT_BUCKET_MAX`.
  static let buckets: UInt32 = 512

  /// QEMU's `tdb_hash` of a key, modulo ``buckets``.
  static func bucket(_ key: String) -> UInt32 {
    let bytes = Array(key.utf8)
    var value = 0x238F_13AF &* UInt32(truncatingIfNeeded: bytes.count)
    for (index, byte) in bytes.enumerated() {
      value = value &+ (UInt32(byte) << UInt32(index * 5 % 24))
    }
    return (1_103_515_243 &* value &+ 12345) % buckets
  }

  /// `members` (in insertion order) in the order a QDict iterates them.
  static func sorted<Value>(_ members: [(String, Value)]) -> [(String, Value)] {
    members.enumerated().sorted { left, right in
      let (a, b) = (bucket(left.element.0), bucket(right.element.0))
      return a != b ? a < b : left.offset > right.offset
    }.map(\.element)
  }

  /// QEMU's compact JSON (`qobject_to_json`) of a dict whose members are
  /// strings or dicts, in QDict order.
  static func json(_ members: [(String, QObject)]) -> String {
    let parts = sorted(members).map { key, value -> String in
      let text: String
      switch value {
      case .dict(let inner): text = json(inner)
      default: text = value.prettyJSON()
      }
      return "\(QObject.quoted(key)): \(text)"
    }
    return "{" + parts.joined(separator: ", ") + "}"
  }
}
