//! The protobuf codec of every generated client and server: prost's, with
//! 1 KiB starting buffers instead of 8 KiB. Control-plane streams are many
//! and long-lived (each proxy holds a few per target it talks to; the
//! controller one per proxy watch) and their messages small; a larger
//! message just grows its buffer.

use std::marker::PhantomData;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

fn settings() -> BufferSettings {
    BufferSettings::new(1024, 32 * 1024)
}

/// prost encoding with small buffers.
#[derive(Debug, Clone)]
pub struct Prost<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Prost<T, U> {
    fn default() -> Self {
        Prost(PhantomData)
    }
}

impl<T, U> Codec for Prost<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
