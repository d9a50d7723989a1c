D=/tmp/syn20m
[ -d $D ] || python3 convert.py --synthetic 138493 26744 20000000 --output $D > $OUT/convert.txt 2>&1
run() { name=$1; t=$2; shift 2; s=$(date +%s); timeout $t python3 "$@" > $OUT/$name.txt 2>&1; echo "$name rc=$? $(( $(date +%s) - s )) s"; grep -v "^USDT\|Warning\|warn" $OUT/$name.txt | tail -5; }
run demo_ro 100 ncf.py --compile reduce-overhead -e 3 --amp --checkpoint_dir /tmp/ck
run tb_comp 100 bench/train_bench.py --data $D --batch_sizes 1048576 65536 --amp --compile --append
run tb_ro 100 bench/train_bench.py --data $D --batch_sizes 1048576 65536 --amp --compile reduce-overhead --append
run infer_ro 120 bench/inference_bench.py --amp --compile reduce-overhead --batch_sizes 1 4 16 64 256 1024 4096 16384 65536 262144 1048576 --append
cp BENCHMARKS.md $OUT/
