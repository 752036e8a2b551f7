import BlockCore
import Dispatch
import Foundation
import NIOCore
import NIOPosix
import Synchronization
import Testing

@testable import NBD

#if canImport(Glibc)
  import Glibc
#endif

/// Where the client's handshake runs: on its socket's event loop, so that a
/// block layer kept busy (here: its thread held outright) does not stall
/// the handshake past a server's time limit.
struct NBDClientNegotiationTests {
  @Test
  func handshakeCompletesWhileTheBlockLayerIsBusy() async throws {
    var ends: [Int32] = [-1, -1]
    try #require(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &ends) == 0)
    let serverEnd = FileHandle(fileDescriptor: ends[1], closeOnDealloc: true)
    let socket = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
      .withConnectedSocket(ends[0]) { channel in
        channel.eventLoop.makeCompletedFuture {
          let (inbound, continuation) = AsyncThrowingStream.makeStream(of: ByteBuffer.self)
          try NBDClientChannel.addInboundHandler(to: channel, feeding: continuation)
          return NBDClientChannel(channel: channel, inbound: inbound)
        }
      }
    // An oldstyle server: the greeting carries the export's size and flags.
    var greeting = Data("NBDMAGIC".utf8)
    for value in [NBDClientHandshake.oldstyleMagic, UInt64(3 << 20)] {
      withUnsafeBytes(of: value.bigEndian) { greeting.append(contentsOf: $0) }
    }
    withUnsafeBytes(of: UInt32(1).bigEndian) { greeting.append(contentsOf: $0) }
    greeting.append(Data(count: 124))
    try serverEnd.write(contentsOf: greeting)

    // The block layer's thread is held until the handshake has ended, or
    // for 20 seconds at most (then the handshake waited for it: a failure).
    let entered = DispatchSemaphore(value: 0)
    let release = DispatchSemaphore(value: 0)
    let handshakeEnded = DispatchSemaphore(value: 0)
    let heldTooLong = Atomic<Bool>(false)
    Task { @BlockActor in
      entered.signal()
      release.wait()
    }
    await withCheckedContinuation { (started: CheckedContinuation<Void, Never>) in
      Thread {
        entered.wait()
        started.resume()
        if handshakeEnded.wait(timeout: .now() + 20) == .timedOut {
          heldTooLong.store(true, ordering: .sequentiallyConsistent)
        }
        release.signal()
      }.start()
    }
    let negotiated = try await NBDClientNegotiation(on: socket.channel.eventLoop).run(
      NBDClientHandshake(export: "", context: nil), over: socket)
    handshakeEnded.signal()
    let waitedForTheBlockLayer = heldTooLong.load(ordering: .sequentiallyConsistent)
    #expect(!waitedForTheBlockLayer)
    #expect(negotiated.export.size == 3 << 20)
    #expect(negotiated.leftover.readableBytes == 0)
    socket.close()
  }
}
