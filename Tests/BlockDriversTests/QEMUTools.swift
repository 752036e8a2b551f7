import BlockTestSupport
import Foundation

/// The QEMU tools interop tests run, found by the shared ``ToolLocator``
/// (tests declare them with `.requires(...)`; the bare name when missing, so
/// that a run fails rather than crashes).
enum QEMUTools {
  static let qemuIO = ToolLocator.path(of: "qemu-io") ?? "qemu-io"
  static let qemuImg = ToolLocator.path(of: "qemu-img") ?? "qemu-img"

  /// Runs a tool to completion; its exit status and its standard output and
  /// error together.
  static func run(_ tool: String, _ arguments: [String]) async throws -> (
    status: Int32, output: String
  ) {
    let result = try await ChildProcess.run(tool, arguments, mergeError: true)
    return (result.termination.status, result.output)
  }
}

/// A `qemu-io` process that keeps an image open while it waits for commands
/// on its standard input; it closes the image and exits when input ends.
final class QemuIOSession: @unchecked Sendable {
  private let process: ChildProcess
  /// Everything the process printed so far.
  private(set) var transcript = ""

  /// Starts `qemu-io ARGUMENTS`; use ``send(_:until:)`` to wait until it has
  /// the image open.
  init(_ arguments: [String]) throws {
    process = try ChildProcess(QEMUTools.qemuIO, arguments, pipeInput: true, mergeError: true)
  }

  /// Sends a command and reads its output until `marker` appears or the
  /// process ends; whether the marker appeared.
  func send(_ command: String, until marker: String) async -> Bool {
    do {
      try process.input?.write(contentsOf: Data((command + "\n").utf8))
    } catch {
      // The process has exited (it could not open the image, for instance).
      transcript += "[cannot send '\(command)': \(error)]"
      return false
    }
    let handle = process.output
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
    try? process.input?.close()
    return await process.wait().status
  }
}
