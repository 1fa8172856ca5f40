// Torch-free pieces shared by the CPU and CUDA kernels of the sampling maskers, written once so
// that both backends draw the same random numbers and lay out LSH signatures the same way.
//
// Random numbers are counter-based: a word is a hash of (seed, layer, stream, row, key), so any
// thread can compute any draw without state, and CPU and CUDA agree bit for bit. The hash is the
// SplitMix64 finaliser (Stafford's variant 13), a bijection on 64-bit words with full avalanche.
//
// Sampling without replacement: every candidate key j of a row gets the priority word
// key_priority(row, j); the n candidates with the smallest priorities (ties: lower key) form a
// uniformly random n-subset, so each of m candidates is included with probability exactly n / m.
#pragma once
#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define SAH_HOST_DEVICE __host__ __device__
#else
#define SAH_HOST_DEVICE
#endif

namespace sah {

constexpr uint64_t kGoldenGamma = 0x9e3779b97f4a7c15ULL;

SAH_HOST_DEVICE inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// The word at position `counter` of the stream named by `key`.
SAH_HOST_DEVICE inline uint64_t counter_hash(uint64_t key, uint64_t counter) {
  return mix64(key ^ mix64(counter + kGoldenGamma));
}

// Independent random streams of one (seed, layer): one per purpose.
enum class RandomStream : uint64_t {
  kRandomSampling = 1,
  kAdaptiveBase = 2,    // adaptive sampling: the base sample (statistics only)
  kAdaptiveBudget = 3,  // adaptive sampling: the budget sample (the output)
  kLshProjections = 4,  // MagicPig: the Gaussian projection matrix
};

SAH_HOST_DEVICE inline uint64_t stream_key(int64_t seed, int64_t layer, RandomStream stream) {
  uint64_t key = counter_hash(0, static_cast<uint64_t>(seed));
  key = counter_hash(key, static_cast<uint64_t>(layer));
  return counter_hash(key, static_cast<uint64_t>(stream));
}

// Key of one query row: batch b, query head h, absolute position pos of the query. Keying by the
// absolute position gives a query the same sample in prefill and in decode, and successive
// decode steps different samples.
SAH_HOST_DEVICE inline uint64_t row_key(uint64_t stream, int64_t b, int64_t h, int64_t pos) {
  uint64_t key = counter_hash(stream, static_cast<uint64_t>(b));
  key = counter_hash(key, static_cast<uint64_t>(h));
  return counter_hash(key, static_cast<uint64_t>(pos));
}

SAH_HOST_DEVICE inline uint64_t key_priority(uint64_t row, int64_t j) {
  return counter_hash(row, static_cast<uint64_t>(j));
}

// Uniform double in the open interval (0, 1) from the top 52 bits of a word (exact arithmetic).
SAH_HOST_DEVICE inline double uniform_open01(uint64_t x) {
  return (static_cast<double>(x >> 12) + 0.5) * (1.0 / 4503599627370496.0);
}

// Standard normal number `index` of a stream (Box-Muller on two consecutive words).
inline double counter_normal(uint64_t stream, uint64_t index) {
  const double u1 = uniform_open01(counter_hash(stream, 2 * index));
  const double u2 = uniform_open01(counter_hash(stream, 2 * index + 1));
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

// Layout of MagicPig signatures: L tables of K bits, one int32 word row per vector. Table l
// occupies `slot` bits starting at bit l * slot of the row (bit b of the row is bit b % 32 of
// word b / 32); bit c of table l is bit l * slot + c. The slot is K rounded up to a power of two
// when K <= 32 (tables never straddle words) and to a multiple of 32 otherwise; padding bits are
// 0, so a table matches when its slot of (a XOR b) is zero.
struct LshLayout {
  int64_t tables = 0, bits = 0, slot = 0, words = 0;
};

SAH_HOST_DEVICE inline LshLayout lsh_layout(int64_t tables, int64_t bits) {
  LshLayout out;
  out.tables = tables;
  out.bits = bits;
  if (bits <= 32) {
    out.slot = 1;
    while (out.slot < bits) out.slot *= 2;
  } else {
    out.slot = 32 * ((bits + 31) / 32);
  }
  out.words = (tables * out.slot + 31) / 32;
  return out;
}

// Sets bit c of table l in a zero-initialised word row.
SAH_HOST_DEVICE inline void lsh_set_bit(const LshLayout& lay, int64_t l, int64_t c, int32_t* row) {
  const int64_t bit = l * lay.slot + c;
  row[bit / 32] = static_cast<int32_t>(static_cast<uint32_t>(row[bit / 32]) | (1u << (bit % 32)));
}

// Whether table l has all its bits equal in two signatures.
SAH_HOST_DEVICE inline bool lsh_table_match(const LshLayout& lay, int64_t l, const int32_t* a,
                                            const int32_t* b) {
  const int64_t first = l * lay.slot;
  if (lay.slot >= 32) {
    for (int64_t w = first / 32; w < (first + lay.slot) / 32; ++w) {
      if (a[w] != b[w]) return false;
    }
    return true;
  }
  const uint32_t diff = static_cast<uint32_t>(a[first / 32] ^ b[first / 32]);
  return ((diff >> (first % 32)) & ((1u << lay.slot) - 1u)) == 0u;
}

SAH_HOST_DEVICE inline bool lsh_any_match(const LshLayout& lay, const int32_t* a,
                                          const int32_t* b) {
  for (int64_t l = 0; l < lay.tables; ++l) {
    if (lsh_table_match(lay, l, a, b)) return true;
  }
  return false;
}

// Probability that at least one of L tables of K sign bits collides for two vectors at cosine
// similarity `cosine`: 1 - (1 - (1 - theta/pi)^K)^L with theta = arccos(cosine).
SAH_HOST_DEVICE inline double lsh_collision_probability(double cosine, int64_t bits,
                                                        int64_t tables) {
  const double c = cosine > 1.0 ? 1.0 : (cosine < -1.0 ? -1.0 : cosine);
  const double one_table = std::pow(1.0 - std::acos(c) / 3.141592653589793, double(bits));
  if (one_table >= 1.0) return 1.0;
  return -std::expm1(double(tables) * std::log1p(-one_table));
}

}  // namespace sah
