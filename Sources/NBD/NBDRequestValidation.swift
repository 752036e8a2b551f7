/// The checks qemu-nbd 7.2 makes on a request header before handling it
/// (`nbd_co_receive_request`), in its order and with its messages; with
/// extended headers, those of QEMU 8.2+ (the extended magic, 64-bit
/// lengths, NBD_CMD_FLAG_PAYLOAD_LEN).
///
/// qemu-nbd replies EINVAL to every one of them (even "read-only" and "past
/// EOF", where it computes EROFS/ENOSPC and then sends EINVAL): a client can
/// tell, so Spindle does the same.
public enum NBDRequestValidation: Equatable, Sendable {
  /// A known command whose header passed every check.
  case valid(NBDCommand)
  /// DISC: no reply; close once the requests in flight are answered.
  case disconnect
  /// An extended BLOCK_STATUS with NBD_CMD_FLAG_PAYLOAD_LEN: read its
  /// `length` bytes of payload (``NBDBlockStatusPayload``), then check the
  /// request again with the payload's effect length and `payloadConsumed`.
  case readBlockStatusPayload
  /// Reply with `error` and `message`. `payloadFollows`: a payload of the
  /// request's length must be read (and thrown away) first; `fatal`: the
  /// server cannot find the next header (an unread payload, a bad magic)
  /// and drops the client after replying.
  case reject(error: NBDError, message: String, payloadFollows: Bool, fatal: Bool)

  /// Checks `request` against an export of `exportSize` bytes, for a client
  /// with structured replies (`structuredReplies`) or without.
  public static func check(
    _ request: NBDRequest, exportSize: UInt64, readOnly: Bool, structuredReplies: Bool
  ) -> NBDRequestValidation {
    check(
      request, exportSize: exportSize, readOnly: readOnly,
      mode: structuredReplies ? .structured : .simple)
  }

  /// Checks `request` against an export of `exportSize` bytes, for a client
  /// whose transmission uses `mode`. `payloadConsumed`: the request's
  /// payload was read already (a BLOCK_STATUS payload, after
  /// ``readBlockStatusPayload``), and `length` is its effect length.
  public static func check(
    _ request: NBDRequest, exportSize: UInt64, readOnly: Bool, mode: NBDHeaderMode,
    payloadConsumed: Bool = false
  ) -> NBDRequestValidation {
    let command = NBDCommand(rawValue: request.type)
    let isWrite = command == .write
    let extended = mode == .extended
    let expectedMagic = extended ? NBDProtocol.extendedRequestMagic : NBDProtocol.requestMagic
    if request.magic != expectedMagic {
      let got = "got 0x\(String(request.magic, radix: 16))"
      return .reject(
        error: .invalid,
        message: extended
          ? "invalid magic (\(got), expected 0x\(String(expectedMagic, radix: 16)))"
          : "invalid magic (\(got))",
        payloadFollows: false, fatal: true)
    }
    if command == .disconnect { return .disconnect }
    // With extended headers, PAYLOAD_LEN makes the length a payload's.
    let flaggedPayload = extended && request.flags.contains(.payloadLength) && !payloadConsumed
    let hasPayload = isWrite || flaggedPayload
    let maximum = UInt64(NBDProtocol.maxBufferSize)
    // qemu-nbd 7.2's text has a stray space; QEMU 8.2+ (the only one with
    // extended headers) dropped it.
    let tooLong =
      extended
      ? "len (\(request.length)) is larger than max len (\(maximum))"
      : "len (\(request.length) ) is larger than max len (\(maximum))"
    if hasPayload || command == .read || command == .cache, request.length > maximum {
      return .reject(error: .invalid, message: tooLong, payloadFollows: false, fatal: hasPayload)
    }
    if flaggedPayload && command == .blockStatus { return .readBlockStatusPayload }
    // A payload on a command that takes none is thrown away and the command
    // fails on its flags (QEMU: the length then counts as 0).
    let effectLength = flaggedPayload && !isWrite ? 0 : request.length
    func reject(_ message: String) -> NBDRequestValidation {
      .reject(error: .invalid, message: message, payloadFollows: hasPayload, fatal: false)
    }
    if readOnly && (isWrite || command == .writeZeroes || command == .trim) {
      return reject("Export is read-only")
    }
    if request.offset > exportSize || effectLength > exportSize - request.offset {
      return reject(
        "operation past EOF; From: \(request.offset), Len: \(effectLength), Size: \(exportSize)")
    }
    var valid: NBDCommandFlags = .fua
    switch command {
    case .read where mode >= .structured: valid.insert(.dontFragment)
    case .write where extended: valid.insert(.payloadLength)
    case .writeZeroes: valid.formUnion([.noHole, .fastZero])
    case .blockStatus:
      valid.insert(.reqOne)
      if extended { valid.insert(.payloadLength) }
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
