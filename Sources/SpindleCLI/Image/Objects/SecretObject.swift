import Foundation

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#endif

/// A `secret` object (QEMU's `QCryptoSecret`): bytes given inline (`data`)
/// or read from a file (`file`), as raw text or base64, kept for the
/// commands that will need them (encryption is not supported yet).
struct SecretObject {
  /// The object's ID.
  var id: String
  /// The secret's bytes as given (base64 text when `isBase64`).
  var bytes: [UInt8]
  /// `format=base64` was given.
  var isBase64: Bool

  /// The secret itself: the bytes, base64-decoded when given as base64
  /// (undecodable text is kept as given).
  var rawBytes: [UInt8] {
    guard isBase64, let data = Data(base64Encoded: Data(bytes)) else { return bytes }
    return [UInt8](data)
  }

  /// The properties `secret` accepts, in QEMU's order of checking.
  static let propertyNames = ["format", "keyid", "iv", "data", "file"]

  /// What `--object secret,help` prints.
  static let help = """
    secret options:
      data=<string>
      file=<string>
      format=<QCryptoSecretFormat>
      iv=<string>
      keyid=<string>

    """

  /// QEMU's QAPI checks of the properties (`SecretProperties`), made before
  /// the object is created: each member a string, `format` one of the
  /// formats, no other member.
  static func checkProperties(_ definition: ObjectDefinition) throws(ObjectError) {
    for name in propertyNames {
      if definition.nestedKey(under: name) != nil {
        throw ObjectError("Parameters '\(name).*' are unexpected")
      }
      if name == "format", let format = definition["format"], format != "raw", format != "base64" {
        throw ObjectError("Parameter 'format' does not accept value '\(format)'")
      }
    }
    for name in definition.memberNames
    where name != "qom-type" && name != "id" && !propertyNames.contains(name) {
      throw ObjectError("Parameter '\(name)' is unexpected")
    }
  }

  /// Loads the data as QEMU's secret object does when it completes
  /// (properties checked by ``checkProperties(_:)``); `lookup` finds an
  /// already defined secret for `keyid`.
  init(id: String, definition: ObjectDefinition, lookup: (String) -> SecretObject?)
    throws(ObjectError)
  {
    self.id = id
    isBase64 = definition["format"] == "base64"
    switch (definition["data"], definition["file"]) {
    case (.some, .some): throw ObjectError("'file' and 'data' are mutually exclusive")
    case (nil, nil): throw ObjectError("Either 'file' or 'data' must be provided")
    case (let data?, nil): bytes = Array(data.utf8)
    case (nil, let path?): bytes = try Self.readFile(path)
    }
    if isBase64 {
      // QEMU's qbase64_decode: no NUL, only the alphabet, padding and newlines.
      guard !bytes.contains(0) else {
        throw ObjectError("Base64 data contains embedded NUL characters")
      }
      let alphabet = Set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\n".utf8)
      guard bytes.allSatisfy(alphabet.contains) else {
        throw ObjectError("Base64 data contains invalid characters")
      }
    }
    if let keyID = definition["keyid"] {
      if keyID == id { throw ObjectError("Secret with id '\(id)' has no data") }
      guard lookup(keyID) != nil else { throw ObjectError("No secret with id '\(keyID)'") }
      throw ObjectError("Secrets encrypted with 'keyid' are not supported by Spindle yet")
    }
  }

  /// The whole file at `path`, with GLib's messages for failures.
  private static func readFile(_ path: String) throws(ObjectError) -> [UInt8] {
    let descriptor = open(path, O_RDONLY | O_CLOEXEC)
    guard descriptor >= 0 else {
      let reason = String(cString: strerror(errno))
      throw ObjectError("Unable to read \(path): Failed to open file “\(path)”: \(reason)")
    }
    defer { close(descriptor) }
    var contents: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
      let count = chunk.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
      if count < 0 {
        if errno == EINTR { continue }
        let reason = String(cString: strerror(errno))
        throw ObjectError("Unable to read \(path): Error reading file “\(path)”: \(reason)")
      }
      if count == 0 { return contents }
      contents += chunk[0..<count]
    }
  }
}
