;; echo: answers every call with the request it received, i.e.
;; {"tool": "...", "arguments": {...}}. Streams standard input to standard
;; output in 64 KiB chunks, so it needs no memory beyond one page of
;; buffer, and imports only fd_read and fd_write.
(module
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  ;; page 0: iovec at 0 (ptr, len), count at 8; page 1: the buffer.
  (memory (export "memory") 2 2)
  (func (export "_start")
    (local $n i32)
    (loop $more
      (i32.store (i32.const 0) (i32.const 65536))
      (i32.store (i32.const 4) (i32.const 65536))
      (if (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8))
        (then unreachable))
      (local.set $n (i32.load (i32.const 8)))
      (if (local.get $n)
        (then
          (i32.store (i32.const 4) (local.get $n))
          (if (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))
            (then unreachable))
          (br $more)))))
)
