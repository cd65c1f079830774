//! The QAT objective: distillation from the full-precision model plus the label loss.

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Tensor, TensorData};

/// `alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student,
/// labels)`, both terms averaged over the batch (a `[1]` tensor). `teacher` is a constant (it may
/// live on the plain device while `student` carries the graph). The `T^2` factor keeps the
/// distillation gradient on the scale of the label loss whatever the temperature (Hinton et al.).
pub fn distillation_loss(
    student: Tensor<2>,
    teacher: Tensor<2>,
    labels: &[usize],
    alpha: f64,
    temperature: f64,
) -> Tensor<1> {
    let [b, k] = student.dims();
    let mut one_hot = vec![0f32; b * k];
    for (i, &l) in labels.iter().enumerate() {
        one_hot[i * k + l.min(k - 1)] = 1.0;
    }
    let one_hot = Tensor::<2>::from_data(TensorData::new(one_hot, [b, k]), &student.device());
    let ce = log_softmax(student.clone(), 1)
        .mul(one_hot)
        .sum_dim(1)
        .mean()
        .neg();
    if alpha <= 0.0 {
        return ce;
    }
    let t = temperature;
    let teacher = teacher.inner().div_scalar(t);
    let p_t = softmax(teacher.clone(), 1);
    let log_p_t = log_softmax(teacher, 1);
    let log_p_s = log_softmax(student.div_scalar(t), 1);
    let kl = p_t
        .mul(log_p_t.sub(log_p_s))
        .sum_dim(1)
        .mean()
        .mul_scalar(t * t);
    kl.mul_scalar(alpha) + ce.mul_scalar(1.0 - alpha)
}
