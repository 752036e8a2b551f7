#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// Formats with the C library's `printf` rules, so that numbers (`%.3f`,
/// `%05.2f`, `%f`) round and pad exactly as QEMU's output does.
func cFormat(_ format: String, _ arguments: any CVarArg...) -> String {
  withVaList(arguments) { list in
    var buffer = [CChar](repeating: 0, count: 128)
    let needed = buffer.withUnsafeMutableBufferPointer { pointer in
      vsnprintf(pointer.baseAddress, pointer.count, format, list)
    }
    if Int(needed) >= buffer.count {
      buffer = [CChar](repeating: 0, count: Int(needed) + 1)
      _ = withVaList(arguments) { again in
        buffer.withUnsafeMutableBufferPointer { pointer in
          vsnprintf(pointer.baseAddress, pointer.count, format, again)
        }
      }
    }
    return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
  }
}
