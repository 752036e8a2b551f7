import BlockCore

/// Progress of a multi-step amend, as QEMU's `qcow2_amend_helper_cb`
/// reports it: each operation's own progress projected onto the whole.
@BlockActor
final class Qcow2AmendProgress {
  /// The long operations of an amend.
  enum Operation { case upgrading, changingRefcountOrder, downgrading }

  private let report: (Int64, Int64) -> Void
  private let totalOperations: Int64
  /// The operation now running.
  var current: Operation?
  private var last: Operation?
  private var offsetCompleted: Int64 = 0
  private var operationsCompleted: Int64 = 0
  private var lastWorkSize: Int64 = 0

  /// A reporter for `totalOperations` operations; `report` gets the work
  /// done and the (projected) total.
  init(totalOperations: Int, report: @escaping (Int64, Int64) -> Void) {
    self.totalOperations = Int64(totalOperations)
    self.report = report
  }

  /// The running operation reached `offset` of `workSize`.
  func update(_ offset: Int64, of workSize: Int64) {
    guard totalOperations > 0 else { return }
    if current != last {
      if last != nil {
        offsetCompleted += lastWorkSize
        operationsCompleted += 1
      }
      last = current
    }
    lastWorkSize = workSize
    let currentWork = offsetCompleted + workSize
    let projected =
      currentWork * (totalOperations - operationsCompleted - 1) / (operationsCompleted + 1)
    report(offsetCompleted + offset, currentWork + projected)
  }
}
