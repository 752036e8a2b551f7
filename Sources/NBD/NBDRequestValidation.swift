/// The checks qemu-nbd 7.2 makes on a request header before handling it
/// (`nbd_co_receive_request`), in its order and with its messages.
///
/// qemu-nbd replies EINVAL to every one of them (even "read-only" and "past
/// EOF", where it computes EROFS/ENOSPC and then sends EINVAL): a client can
/// tell, so Spindle does the same.
public enum NBDRequestValidation: Equatable, Sendable {
  /// A known command whose header passed every check.
  case valid(NBDCommand)
  /// DISC: no reply; close once the requests in flight are answered.
  case disconnect
  /// Reply with `error` and `message`. `payloadFollows`: a WRITE payload
  /// must be read (and thrown away) first; `fatal`: the server cannot find
  /// the next header (an unread payload, a bad magic) and drops the client
  /// after replying.
  case reject(error: NBDError, message: String, payloadFollows: Bool, fatal: Bool)

  /// Checks `request` against an export of `exportSize` bytes.
  public static func check(
    _ request: NBDRequest, exportSize: UInt64, readOnly: Bool, structuredReplies: Bool
  ) -> NBDRequestValidation {
    let command = NBDCommand(rawValue: request.type)
    let isWrite = command == .write
    if request.magic != NBDProtocol.requestMagic {
      return .reject(
        error: .invalid, message: "invalid magic (got 0x\(String(request.magic, radix: 16)))",
        payloadFollows: false, fatal: true)
    }
    if command == .disconnect { return .disconnect }
    if command == .read || isWrite || command == .cache,
      request.length > NBDProtocol.maxBufferSize
    {
      return .reject(
        error: .invalid,
        // qemu-nbd 7.2's text has this stray space.
        message: "len (\(request.length) ) is larger than max len (\(NBDProtocol.maxBufferSize))",
        payloadFollows: false, fatal: isWrite)
    }
    func reject(_ message: String) -> NBDRequestValidation {
      .reject(error: .invalid, message: message, payloadFollows: isWrite, fatal: false)
    }
    if readOnly && (isWrite || command == .writeZeroes || command == .trim) {
      return reject("Export is read-only")
    }
    if request.offset > exportSize || UInt64(request.length) > exportSize - request.offset {
      return reject(
        "operation past EOF; From: \(request.offset), Len: \(request.length), Size: \(exportSize)")
    }
    var valid: NBDCommandFlags = .fua
    switch command {
    case .read where structuredReplies: valid.insert(.dontFragment)
    case .writeZeroes: valid.formUnion([.noHole, .fastZero])
    case .blockStatus: valid.insert(.reqOne)
    default: break
    }
    if !request.flags.subtracting(valid).isEmpty {
      return reject(
        "unsupported flags for command \(command?.name ?? "<unknown>") (got 0x\(String(request.flags.rawValue, radix: 16)))"
      )
    }
    guard let command else { return reject("invalid request type (\(request.type)) received") }
    return .valid(command)
  }
}
