import Foundation

/// The QEMU tools interop tests run, when installed.
enum QEMUTools {
  static let qemuIO = "/usr/bin/qemu-io"
  static let qemuImg = "/usr/bin/qemu-img"

  static var hasQemuIO: Bool { FileManager.default.isExecutableFile(atPath: qemuIO) }
  static var hasQemuImg: Bool { FileManager.default.isExecutableFile(atPath: qemuImg) }

  /// Runs a tool to completion; its exit status and its standard output and
  /// error together.
  static func run(_ tool: String, _ arguments: [String]) async throws -> (
    status: Int32, output: String
  ) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: tool)
    process.arguments = arguments
    let output = Pipe()
    process.standardOutput = output
    process.standardError = output
    process.standardInput = FileHandle.nullDevice
    let text = try await withCheckedThrowingContinuation {
      (continuation: CheckedContinuation<String, Error>) in
      // Read until EOF on a thread of its own: the reads block.
      let reader = Thread {
        let data = output.fileHandleForReading.readDataToEndOfFile()
        continuation.resume(returning: String(decoding: data, as: UTF8.self))
      }
      do {
        try process.run()
        output.fileHandleForWriting.closeFile()
        reader.start()
      } catch {
        continuation.resume(throwing: error)
      }
    }
    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
      let waiter = Thread {
        process.waitUntilExit()
        continuation.resume()
      }
      waiter.start()
    }
    return (process.terminationStatus, text)
  }
}

/// A `qemu-io` process that keeps an image open while it waits for commands
/// on its standard input; it closes the image and exits when input ends.
final class QemuIOSession: @unchecked Sendable {
  private let process = Process()
  private let input = Pipe()
  private let output = Pipe()
  /// Everything the process printed so far.
  private(set) var transcript = ""

  /// Starts `qemu-io ARGUMENTS`; use ``send(_:until:)`` to wait until it has
  /// the image open.
  init(_ arguments: [String]) throws {
    process.executableURL = URL(fileURLWithPath: QEMUTools.qemuIO)
    process.arguments = arguments
    process.standardInput = input
    process.standardOutput = output
    process.standardError = output
    // A write to a process that has exited must fail, not kill the test run.
    signal(SIGPIPE, SIG_IGN)
    try process.run()
    output.fileHandleForWriting.closeFile()
    input.fileHandleForReading.closeFile()
  }

  /// Sends a command and reads its output until `marker` appears or the
  /// process ends; whether the marker appeared.
  func send(_ command: String, until marker: String) async -> Bool {
    do {
      try input.fileHandleForWriting.write(contentsOf: Data((command + "\n").utf8))
    } catch {
      // The process has exited (it could not open the image, for instance).
      transcript += "[cannot send '\(command)': \(error)]"
      return false
    }
    let handle = output.fileHandleForReading
    let answer = await withCheckedContinuation {
      (continuation: CheckedContinuation<String, Never>) in
      let reader = Thread {
        var text = ""
        while !text.contains(marker) {
          let data = handle.availableData
          if data.isEmpty { break }
          text += String(decoding: data, as: UTF8.self)
        }
        continuation.resume(returning: text)
      }
      reader.start()
    }
    transcript += answer
    return answer.contains(marker)
  }

  /// Closes standard input and waits for the process to exit.
  func finish() async -> Int32 {
    input.fileHandleForWriting.closeFile()
    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
      let waiter = Thread { [process] in
        process.waitUntilExit()
        continuation.resume()
      }
      waiter.start()
    }
    return process.terminationStatus
  }
}
