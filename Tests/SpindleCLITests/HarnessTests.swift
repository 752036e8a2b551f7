import Testing

/// The comparison the image-command harness uses for files that store their
/// own directory's name.
@Suite struct HarnessTests {
  @Test("files equal but for facing directory names compare equal; other differences do not")
  func masking() {
    let first = Array("/tmp/aaa/x".utf8)
    let second = Array("/tmp/bbb/x".utf8)
    var one = [UInt8](repeating: 7, count: 10000)
    var two = one
    for start in [0, 4093, 9990] {
      one.replaceSubrange(start..<start + 10, with: first)
      two.replaceSubrange(start..<start + 10, with: second)
    }
    #expect(sameBytesMaskingNames(one, two, first, second))
    #expect(!sameBytesMaskingNames(one, two, second, first))
    two[5000] = 8
    #expect(!sameBytesMaskingNames(one, two, first, second))
    two[5000] = 7
    two[4093 + 5] = UInt8(ascii: "a")
    #expect(!sameBytesMaskingNames(one, two, first, second))
    #expect(!sameBytesMaskingNames(one, Array(two.dropLast()), first, second))
  }
}
