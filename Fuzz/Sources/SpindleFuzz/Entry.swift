import Foundation

/// A fuzz target: takes one input and traps (`fuzzCheck`) when an
/// invariant does not hold; libFuzzer saves the input that did it.
typealias FuzzTarget = @Sendable ([UInt8]) -> Void

/// The targets, by the name `SPINDLE_FUZZ_TARGET` gives.
let fuzzTargets: [String: FuzzTarget] = [
  "qcow2-io": Qcow2IOTarget.run,
  "qcow2-check": Qcow2CheckTarget.run,
  "options": OptionsTarget.run,
  "qemu-io": QemuIOTarget.run,
  "nbd": NBDTarget.run,
]

/// The target this process runs, chosen once from the environment.
let selectedTarget: FuzzTarget = {
  let name = ProcessInfo.processInfo.environment["SPINDLE_FUZZ_TARGET"] ?? ""
  guard let target = fuzzTargets[name] else {
    let names = fuzzTargets.keys.sorted().joined(separator: ", ")
    FileHandle.standardError.write(Data("SPINDLE_FUZZ_TARGET must be one of: \(names)\n".utf8))
    exit(2)
  }
  return target
}()

/// libFuzzer's driver (it parses the command line and calls the callback
/// once per input).
@_silgen_name("LLVMFuzzerRunDriver")
func llvmFuzzerRunDriver(
  _ argc: UnsafeMutablePointer<Int32>,
  _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
  _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32
) -> Int32

/// The program's entry point: SwiftPM links an executable target with `main`
/// defined as `<module>_main`, so libFuzzer's own `main` is not used; this
/// hands the command line to libFuzzer's driver.
@_cdecl("SpindleFuzz_main")
func spindleFuzzMain(
  _ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
) -> Int32 {
  var count = argc
  var arguments = argv
  return llvmFuzzerRunDriver(&count, &arguments) { data, size in fuzzOneInput(data, size) }
}

/// libFuzzer's entry point: one input per call.
@_cdecl("LLVMFuzzerTestOneInput")
func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
  let input = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
  selectedTarget(input)
  return 0
}

/// Traps with `message` when `condition` is false: a finding.
func fuzzCheck(
  _ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String,
  file: StaticString = #fileID, line: UInt = #line
) {
  if !condition() {
    fatalError("invariant violated: \(message())", file: file, line: line)
  }
}

/// Runs an asynchronous body to completion from libFuzzer's synchronous
/// callback (the body runs on the concurrency pool; this thread waits).
func runBlocking(_ body: @escaping @Sendable () async -> Void) {
  let done = DispatchSemaphore(value: 0)
  Task {
    await body()
    done.signal()
  }
  done.wait()
}
