import BlockCore
import NBD
import NIOCore

/// The NBD server's handshake and request decoders, fed a client's bytes:
/// client flags, then option headers and payloads through the negotiator
/// until transmission starts, then request headers (and WRITE payloads)
/// through the request checks.
///
/// With forced TLS, STARTTLS is taken as if its handshake succeeded.
/// Invariants: every option reply is well formed (magic, the option echoed,
/// a length equal to the bytes that follow); a request found valid lies
/// within the export and, for READ and WRITE, within the buffer limit.
enum NBDTarget {
  static let export = NBDExportInfo(
    name: "", description: "fuzz", size: 1 << 20, requestAlignment: 512, maxTransfer: 1 << 20)

  static func run(_ input: [UInt8]) {
    var buffer = ByteBuffer(bytes: input)
    // The last byte's low bit picks forced TLS (qemu-nbd --tls-creds), so
    // that the options before STARTTLS are explored too.
    var negotiator = NBDNegotiator(export: export, requiresTLS: (input.last ?? 0) & 1 == 1)
    guard let flags = buffer.readInteger(as: UInt32.self),
      negotiator.receiveClientFlags(flags) == nil
    else { return }
    while true {
      guard let header = NBDOptionHeader.decode(&buffer), header.fatalProblem == nil else { return }
      let length = min(Int(header.length), buffer.readableBytes)
      guard let payload = buffer.readSlice(length: length) else { return }
      switch negotiator.handle(option: header.option, payload: payload) {
      case .reply(let reply):
        checkOptionReplies(reply, option: header.option)
      case .replyAndClose(let reply):
        checkOptionReplies(reply, option: header.option)
        return
      case .transmission(let reply):
        if header.option != 1 { checkOptionReplies(reply, option: header.option) }
        transmission(&buffer, structuredReplies: negotiator.structuredReplies)
        return
      case .startTLS(let reply):
        // No TLS here: go on as if the handshake had succeeded.
        checkOptionReplies(reply, option: header.option)
        negotiator.tlsStarted()
      case .disconnect:
        return
      }
    }
  }

  /// Walks the option replies in `reply`.
  static func checkOptionReplies(_ reply: ByteBuffer, option: UInt32) {
    var reply = reply
    while reply.readableBytes > 0 {
      guard let magic = reply.readInteger(as: UInt64.self),
        let echoed = reply.readInteger(as: UInt32.self),
        reply.readInteger(as: UInt32.self) != nil,
        let length = reply.readInteger(as: UInt32.self)
      else {
        fuzzCheck(false, "a truncated option reply header")
        return
      }
      fuzzCheck(magic == NBDProtocol.optionReplyMagic, "option reply magic \(magic)")
      fuzzCheck(echoed == option, "option reply for \(echoed) to option \(option)")
      fuzzCheck(
        Int(length) <= reply.readableBytes,
        "option reply declares \(length) bytes, \(reply.readableBytes) follow")
      reply.moveReaderIndex(forwardBy: Int(length))
    }
  }

  static func transmission(_ buffer: inout ByteBuffer, structuredReplies: Bool) {
    while let request = NBDRequest.decode(&buffer) {
      let validation = NBDRequestValidation.check(
        request, exportSize: export.size, readOnly: false, structuredReplies: structuredReplies)
      switch validation {
      case .valid(let command):
        fuzzCheck(
          request.offset <= export.size
            && UInt64(request.length) <= export.size - request.offset,
          "a valid \(command) past the export's end")
        if command == .read || command == .write {
          fuzzCheck(
            request.length <= NBDProtocol.maxBufferSize, "a valid \(command) over the buffer limit")
        }
        if command == .write {
          buffer.moveReaderIndex(forwardBy: min(Int(request.length), buffer.readableBytes))
        }
      case .disconnect:
        return
      case .readBlockStatusPayload:
        // A BLOCK_STATUS payload (extended headers): skipped, as a payload
        // that follows a rejected request.
        buffer.moveReaderIndex(forwardBy: min(Int(request.length), buffer.readableBytes))
      case .reject(_, _, let payloadFollows, let fatal):
        if fatal { return }
        if payloadFollows {
          buffer.moveReaderIndex(forwardBy: min(Int(request.length), buffer.readableBytes))
        }
      }
    }
  }
}
