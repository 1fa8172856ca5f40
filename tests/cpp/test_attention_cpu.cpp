// CPU attention kernels of sah/attention_cpu.h against a naive double-precision softmax.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "sah/attention_cpu.h"

namespace {

struct Problem {
  int64_t b = 2, h = 4, hkv = 2, sq = 2, sk = 11, d = 8, cap = 6;
  std::vector<double> q, k, v;
  std::vector<int32_t> idx;
  std::vector<float> probs;

  explicit Problem(unsigned seed) {
    std::mt19937 gen(seed);
    std::normal_distribution<double> n01;
    std::uniform_real_distribution<float> u(0.1f, 1.0f);
    q.resize(b * h * sq * d);
    k.resize(b * hkv * sk * d);
    v.resize(k.size());
    for (auto& x : q) x = n01(gen);
    for (auto& x : k) x = n01(gen);
    for (auto& x : v) x = n01(gen);
    idx.assign(b * h * sq * cap, -1);
    probs.assign(idx.size(), 0.0f);
    for (int64_t r = 0; r < b * h * sq; ++r) {
      const int64_t n = r % 4 == 0 ? 0 : 1 + r % cap;  // some rows are empty
      for (int64_t t = 0; t < n; ++t) {
        idx[r * cap + t] = static_cast<int32_t>(t * 2 % sk);
        probs[r * cap + t] = t % 2 ? u(gen) : 1.0f;
      }
    }
  }

  sah::AttentionParams params() const {
    sah::AttentionParams p;
    p.batch = b, p.heads = h, p.kv_heads = hkv, p.q_len = sq, p.k_len = sk, p.head_dim = d;
    p.cap = cap;
    const int64_t qs[4] = {h * sq * d, sq * d, d, 1}, ks[4] = {hkv * sk * d, sk * d, d, 1},
                  is[4] = {h * sq * cap, sq * cap, cap, 1};
    std::copy(qs, qs + 4, p.q_stride);
    std::copy(ks, ks + 4, p.k_stride);
    std::copy(ks, ks + 4, p.v_stride);
    std::copy(is, is + 4, p.idx_stride);
    std::copy(is, is + 4, p.prob_stride);
    p.q = q.data(), p.k = k.data(), p.v = v.data(), p.indices = idx.data(), p.probs = probs.data();
    p.scale = 0.35f;
    return p;
  }
};

TEST(AttentionCpu, ForwardMatchesNaiveWeightedSoftmax) {
  Problem pr(1);
  sah::AttentionParams p = pr.params();
  std::vector<double> out(pr.q.size());
  std::vector<float> lse(pr.b * pr.h * pr.sq);
  p.out = out.data();
  p.lse = lse.data();
  sah::cpu::attention_forward_rows<double>(p, 0, p.rows());
  for (int64_t r = 0; r < p.rows(); ++r) {
    const int64_t hh = (r / pr.sq) % pr.h, bb = r / (pr.sq * pr.h), kvh = hh / (pr.h / pr.hkv);
    std::vector<double> logits;
    std::vector<int64_t> keys;
    for (int64_t t = 0; t < pr.cap; ++t) {
      const int32_t j = pr.idx[r * pr.cap + t];
      if (j < 0) continue;
      double dot = 0;
      for (int64_t c = 0; c < pr.d; ++c)
        dot += pr.q[r * pr.d + c] * pr.k[((bb * pr.hkv + kvh) * pr.sk + j) * pr.d + c];
      logits.push_back(double(p.scale) * dot - std::log(double(pr.probs[r * pr.cap + t])));
      keys.push_back(j);
    }
    if (logits.empty()) {
      EXPECT_TRUE(std::isinf(lse[r]) && lse[r] < 0);
      for (int64_t c = 0; c < pr.d; ++c) EXPECT_EQ(out[r * pr.d + c], 0.0);
      continue;
    }
    double mx = -std::numeric_limits<double>::infinity(), den = 0;
    for (double s : logits) mx = std::max(mx, s);
    for (double s : logits) den += std::exp(s - mx);
    EXPECT_NEAR(lse[r], mx + std::log(den), 1e-5);
    for (int64_t c = 0; c < pr.d; ++c) {
      double num = 0;
      for (size_t t = 0; t < keys.size(); ++t)
        num += std::exp(logits[t] - mx) * pr.v[((bb * pr.hkv + kvh) * pr.sk + keys[t]) * pr.d + c];
      EXPECT_NEAR(out[r * pr.d + c], num / den, 1e-12);
    }
  }
}

TEST(AttentionCpu, BoolAndHfMinMasksForbidKeys) {
  Problem pr(2);
  sah::AttentionParams p = pr.params();
  std::vector<double> out(pr.q.size());
  std::vector<float> lse(pr.b * pr.h * pr.sq);
  p.out = out.data();
  p.lse = lse.data();
  std::vector<float> additive(pr.sk, std::numeric_limits<float>::lowest());  // all forbidden
  p.mask = additive.data();
  p.mask_kind = sah::MaskKind::kFloat32;
  p.mask_stride[0] = p.mask_stride[1] = p.mask_stride[2] = 0;
  sah::cpu::attention_forward_rows<double>(p, 0, p.rows());
  for (float x : lse) EXPECT_TRUE(std::isinf(x) && x < 0);
  for (double x : out) EXPECT_EQ(x, 0.0);
  bool allow_all[64];
  std::fill(allow_all, allow_all + 64, true);
  p.mask = allow_all;
  p.mask_kind = sah::MaskKind::kBool;
  sah::cpu::attention_forward_rows<double>(p, 0, p.rows());
  EXPECT_FALSE(std::isinf(lse[1]));
}

TEST(AttentionCpu, BackwardMatchesFiniteDifferences) {
  Problem pr(3);
  sah::AttentionParams p = pr.params();
  std::vector<double> out(pr.q.size()), dout(pr.q.size()), dq(pr.q.size());
  std::vector<double> dk(pr.k.size(), 0.0), dv(pr.v.size(), 0.0);
  std::vector<float> lse(pr.b * pr.h * pr.sq);
  std::mt19937 gen(7);
  std::normal_distribution<double> n01;
  for (auto& x : dout) x = n01(gen);
  auto loss = [&](Problem& pp) {
    sah::AttentionParams f = pp.params();
    std::vector<double> o(pp.q.size());
    std::vector<float> l(lse.size());
    f.out = o.data();
    f.lse = l.data();
    sah::cpu::attention_forward_rows<double>(f, 0, f.rows());
    double s = 0;
    for (size_t i = 0; i < o.size(); ++i) s += o[i] * dout[i];
    return s;
  };
  p.out = out.data();
  p.lse = lse.data();
  sah::cpu::attention_forward_rows<double>(p, 0, p.rows());
  p.dout = dout.data(), p.dq = dq.data(), p.dk = dk.data(), p.dv = dv.data();
  sah::cpu::attention_backward_groups<double>(p, 0, pr.b * pr.hkv);
  const double eps = 1e-6;
  auto check = [&](std::vector<double>& x, const std::vector<double>& grad) {
    for (size_t i = 0; i < x.size(); i += 7) {
      const double x0 = x[i];
      x[i] = x0 + eps;
      const double up = loss(pr);
      x[i] = x0 - eps;
      const double down = loss(pr);
      x[i] = x0;
      EXPECT_NEAR(grad[i], (up - down) / (2 * eps), 1e-5) << i;
    }
  };
  check(pr.q, dq);
  check(pr.k, dk);
  check(pr.v, dv);
}

}  // namespace
