;; The web page's one hot loop: y += W x in float32 with 128-bit SIMD (about six times plain JavaScript).
;; W is row-major, `cols` floats a row; rows and cols are multiples of 4 (the page pads them with zeros).
;; Pointers are byte offsets into the page's memory. Four rows at a time share each load of x.
;; matvec.wasm beside this file is built from it (tests/test_export_html.py checks they agree):
;;   python -c "import wasmtime; open('matvec.wasm', 'wb').write(wasmtime.wat2wasm(open('matvec.wat').read()))"
(module
  (import "env" "memory" (memory 1))
  (func (export "matvec") (param $w i32) (param $x i32) (param $y i32) (param $rows i32) (param $cols i32)
    (local $stride i32) (local $xend i32) (local $xp i32) (local $p i32) (local $yend i32)
    (local $a0 v128) (local $a1 v128) (local $a2 v128) (local $a3 v128) (local $v v128)
    (local.set $stride (i32.shl (local.get $cols) (i32.const 2)))
    (local.set $xend (i32.add (local.get $x) (local.get $stride)))
    (local.set $yend (i32.add (local.get $y) (i32.shl (local.get $rows) (i32.const 2))))
    (block $done
      (loop $four_rows
        (br_if $done (i32.ge_u (local.get $y) (local.get $yend)))
        (local.set $a0 (v128.const f32x4 0 0 0 0))
        (local.set $a1 (v128.const f32x4 0 0 0 0))
        (local.set $a2 (v128.const f32x4 0 0 0 0))
        (local.set $a3 (v128.const f32x4 0 0 0 0))
        (local.set $xp (local.get $x))
        (local.set $p (local.get $w))
        (loop $four_cols
          (local.set $v (v128.load (local.get $xp)))
          (local.set $a0 (f32x4.add (local.get $a0)
            (f32x4.mul (v128.load (local.get $p)) (local.get $v))))
          (local.set $a1 (f32x4.add (local.get $a1)
            (f32x4.mul (v128.load (i32.add (local.get $p) (local.get $stride))) (local.get $v))))
          (local.set $a2 (f32x4.add (local.get $a2)
            (f32x4.mul (v128.load (i32.add (local.get $p) (i32.shl (local.get $stride) (i32.const 1)))) (local.get $v))))
          (local.set $a3 (f32x4.add (local.get $a3)
            (f32x4.mul (v128.load (i32.add (local.get $p) (i32.mul (local.get $stride) (i32.const 3)))) (local.get $v))))
          (local.set $p (i32.add (local.get $p) (i32.const 16)))
          (local.set $xp (i32.add (local.get $xp) (i32.const 16)))
          (br_if $four_cols (i32.lt_u (local.get $xp) (local.get $xend))))
        ;; transpose-add: the four accumulators' lane sums as one vector, added to y[r .. r+3]
        (local.set $a0 (f32x4.add
          (i8x16.shuffle 0 1 2 3 16 17 18 19 8 9 10 11 24 25 26 27 (local.get $a0) (local.get $a1))
          (i8x16.shuffle 4 5 6 7 20 21 22 23 12 13 14 15 28 29 30 31 (local.get $a0) (local.get $a1))))
        (local.set $a2 (f32x4.add
          (i8x16.shuffle 0 1 2 3 16 17 18 19 8 9 10 11 24 25 26 27 (local.get $a2) (local.get $a3))
          (i8x16.shuffle 4 5 6 7 20 21 22 23 12 13 14 15 28 29 30 31 (local.get $a2) (local.get $a3))))
        (v128.store (local.get $y) (f32x4.add (v128.load (local.get $y)) (f32x4.add
          (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $a0) (local.get $a2))
          (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $a0) (local.get $a2)))))
        (local.set $w (i32.add (local.get $w) (i32.shl (local.get $stride) (i32.const 2))))
        (local.set $y (i32.add (local.get $y) (i32.const 16)))
        (br $four_rows)))))
